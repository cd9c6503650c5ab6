"""Background jobs: expire unpaid orders (closing them at the provider), query stale ones.

Each job handles one order per transaction under a row lock taken with SKIP LOCKED,
so several hosts may run the jobs at once without doing anything twice; every step
is idempotent (a provider close of a closed trade, a notice applied twice).
``ranqi jobs run`` runs them; under ``make run`` they run in-process.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from models.base import utcnow
from models.ordering import NoticeStatus, Outcome, PaymentNotice, apply_notice, record_event
from models.orders import Order
from models.states import OrderState
from payments.base import PaymentError, Provider, TradeStatus
from portal import db

log = logging.getLogger(__name__)

UNPAID = (OrderState.created.value, OrderState.paying.value)


@dataclass
class JobReport:
    expired: int = 0
    paid_on_query: int = 0
    failed: int = 0

    def __str__(self) -> str:
        return f"expired {self.expired}, paid on query {self.paid_on_query}, failed {self.failed}"


def _providers(app: Flask) -> dict[str, Provider]:
    registry: dict[str, Provider] = app.extensions.setdefault("ranqi_providers", {})
    return registry


def _lock_next(session: Session, *conditions: object) -> Order | None:
    return session.scalar(
        select(Order)
        .where(Order.state.in_(UNPAID), *conditions)  # type: ignore[arg-type]
        .order_by(Order.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )


def _settle_from_query(session: Session, provider: Provider, order: Order) -> bool:
    """Ask the provider about ``order``; apply a payment it reports. True if now paid."""
    result = provider.query(order.order_no)
    if result.status != TradeStatus.paid:
        return False
    event = record_event(
        session,
        provider=provider.name,
        kind="query",
        body=repr(result).encode(),
        headers={},
        verified=True,
        order_no=order.order_no,
    )
    outcome = apply_notice(
        session,
        PaymentNotice(
            provider=provider.name,
            order_no=order.order_no,
            provider_trade_no=result.provider_trade_no or "",
            status=NoticeStatus.paid,
            amount=result.amount if result.amount is not None else -1,
            paid_at=result.paid_at,
        ),
        event=event,
    )
    return outcome in {Outcome.paid, Outcome.duplicate}


def expire_orders(app: Flask, *, now: dt.datetime | None = None, limit: int = 1000) -> JobReport:
    """Close unpaid orders past their expiry, at the provider first; a paid one is applied."""
    now = now or utcnow()
    report = JobReport()
    skip: set[int] = set()
    with app.app_context():
        for _ in range(limit):
            session = db.database(app).sessionmaker()
            try:
                order = _lock_next(session, Order.expires_at <= now, Order.id.not_in(skip))
                if order is None:
                    break
                skip.add(order.id)
                provider = _providers(app).get(order.channel)
                if provider is None:
                    log.error(
                        "no provider %s configured for order %s", order.channel, order.order_no
                    )
                    report.failed += 1
                    continue
                # The notify may have been lost: a trade paid at the provider is never closed.
                paid = _settle_from_query(session, provider, order)
                if not paid:
                    provider.close(order.order_no)
                    order.transition_to(OrderState.closed)
                    order.closed_at = now
                session.commit()  # count only what was committed
                if paid:
                    report.paid_on_query += 1
                else:
                    report.expired += 1
            except (PaymentError, SQLAlchemyError) as error:
                session.rollback()
                report.failed += 1
                log.warning("could not expire an order: %s", error)
            finally:
                session.close()
    return report


def query_stale(
    app: Flask, *, now: dt.datetime | None = None, older_than: dt.timedelta, limit: int = 1000
) -> JobReport:
    """Query orders still unpaid ``older_than`` after creation; apply what was paid."""
    now = now or utcnow()
    report = JobReport()
    skip: set[int] = set()
    with app.app_context():
        for _ in range(limit):
            session = db.database(app).sessionmaker()
            try:
                order = _lock_next(
                    session, Order.created_at <= now - older_than, Order.id.not_in(skip)
                )
                if order is None:
                    break
                skip.add(order.id)
                provider = _providers(app).get(order.channel)
                paid = provider is not None and _settle_from_query(session, provider, order)
                session.commit()
                if paid:
                    report.paid_on_query += 1
            except (PaymentError, SQLAlchemyError) as error:
                session.rollback()
                report.failed += 1
                log.warning("could not query an order: %s", error)
            finally:
                session.close()
    return report


def run_all(app: Flask) -> JobReport:
    """One round of every job."""
    ttl_query = dt.timedelta(seconds=app.config["ORDER_QUERY_AFTER_SECONDS"])
    first = query_stale(app, older_than=ttl_query)
    second = expire_orders(app)
    return JobReport(
        second.expired, first.paid_on_query + second.paid_on_query, first.failed + second.failed
    )


class InProcessJobs:
    """Runs :func:`run_all` every ``interval`` seconds in a daemon thread (development)."""

    def __init__(self, app: Flask, interval: float) -> None:
        self.app = app
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ranqi-jobs", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                report = run_all(self.app)
                if report.expired or report.paid_on_query or report.failed:
                    log.info("jobs: %s", report)
            except Exception:  # keep running; the failure is in the log
                log.exception("jobs round failed")
