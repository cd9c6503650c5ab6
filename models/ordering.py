"""Orders and what payment notices do to them: created once, paid exactly once.

A provider's verified notify arrives here as a :class:`PaymentNotice` (plain data; the
``payments`` package never reaches into the models). :func:`apply_notice` locks the
order row, re-reads it and moves it to ``paid`` exactly once, creating its credit and
ledger entries; anything that does not fit becomes a :class:`PaymentConflict` for staff.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import credits
from models.accounts import Meter
from models.clock import LOCAL_TZ
from models.errors import DomainError
from models.orders import Order, PaymentConflict, PaymentEvent
from models.states import OrderState

log = logging.getLogger(__name__)

CHANNELS = ("alipay", "wechat", "wechat_v2")


class NoticeStatus(StrEnum):
    paid = "paid"
    closed = "closed"
    failed = "failed"


class Outcome(StrEnum):
    """What a notice did; stored on the PaymentEvent."""

    paid = "paid"  #: the order became paid now
    duplicate = "duplicate"  #: the same payment again: nothing changed
    conflict = "conflict"  #: money that does not fit: a PaymentConflict for staff
    closed = "closed"  #: the provider closed an unpaid trade: the order is closed
    ignored = "ignored"  #: a failure or close notice that changes nothing (logged)


@dataclass(frozen=True)
class PaymentNotice:
    """A verified provider notice, in the domain's terms (amount in fen)."""

    provider: str
    order_no: str
    provider_trade_no: str
    status: NoticeStatus
    amount: int
    paid_at: dt.datetime | None = None


def new_order_no(now: dt.datetime) -> str:
    """A unique, sortable order number: local time to the second + 8 random digits."""
    return f"{now.astimezone(LOCAL_TZ):%Y%m%d%H%M%S}{secrets.randbelow(10**8):08d}"


def create_order(
    session: Session,
    *,
    meter: Meter,
    tariff_id: int,
    volume: int,
    amount: int,
    quote: dict[str, Any],
    channel: str,
    now: dt.datetime,
    ttl: dt.timedelta,
    idempotency_key: str | None = None,
) -> Order:
    """A new order in state ``created``; an existing one for a repeated idempotency key.

    The same key with different content is refused (the client reused a key).
    """
    if channel not in CHANNELS:
        raise DomainError(f"unknown payment channel {channel!r}", code="bad_channel")
    if idempotency_key is not None:
        existing = session.scalar(select(Order).where(Order.idempotency_key == idempotency_key))
        if existing is not None:
            same = (existing.meter_id, existing.volume, existing.amount, existing.channel) == (
                meter.id,
                volume,
                amount,
                channel,
            )
            if not same:
                raise DomainError(
                    "this Idempotency-Key was used for a different order",
                    code="idempotency_key_reused",
                )
            return existing
    order = Order(
        order_no=new_order_no(now),
        account_id=meter.account_id,
        meter_id=meter.id,
        tariff_id=tariff_id,
        channel=channel,
        amount=amount,
        volume=volume,
        quote=quote,
        idempotency_key=idempotency_key,
        created_at=now,
        expires_at=now + ttl,
    )
    session.add(order)
    session.flush()
    return order


def record_event(
    session: Session,
    *,
    provider: str,
    kind: str,
    body: bytes,
    headers: dict[str, str],
    verified: bool,
    order_no: str | None = None,
    outcome: str = "",
    detail: str = "",
) -> PaymentEvent:
    """Store a provider message as received (raw bytes), verified or not."""
    event = PaymentEvent(
        provider=provider,
        kind=kind,
        order_no=order_no,
        raw_body=body,
        headers=headers,
        verified=verified,
        outcome=outcome,
        detail=detail,
    )
    session.add(event)
    session.flush()
    return event


def apply_notice(session: Session, notice: PaymentNotice, *, event: PaymentEvent) -> Outcome:
    """Apply a verified notice under a row lock: paid exactly once, or a conflict, or nothing."""
    # populate_existing: re-read under the lock, another worker may have moved the order
    order = session.scalar(
        select(Order)
        .where(Order.order_no == notice.order_no)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    outcome = _decide(session, order, notice, event)
    event.outcome = outcome.value
    event.order_no = notice.order_no
    session.flush()
    log.info(
        "notice %s %s %s → %s", notice.provider, notice.order_no, notice.status.value, outcome.value
    )
    return outcome


def _decide(
    session: Session, order: Order | None, notice: PaymentNotice, event: PaymentEvent
) -> Outcome:
    def conflict(reason: str) -> Outcome:
        session.add(
            PaymentConflict(
                provider=notice.provider,
                order_no=notice.order_no,
                order_id=order.id if order else None,
                event_id=event.id,
                provider_trade_no=notice.provider_trade_no,
                reason=reason,
                amount=notice.amount,
            )
        )
        log.warning(
            "payment conflict %s for %s %s (%d fen)",
            reason,
            notice.provider,
            notice.order_no,
            notice.amount,
        )
        return Outcome.conflict

    if notice.status != NoticeStatus.paid:
        if (
            order is not None
            and notice.status == NoticeStatus.closed
            and OrderState(order.state) in {OrderState.created, OrderState.paying}
        ):
            order.transition_to(OrderState.closed)
            order.closed_at = event.received_at
            return Outcome.closed
        # A failure or close after a success never undoes it; logged through the event.
        return Outcome.ignored
    if order is None:
        return conflict("unknown_order")
    state = OrderState(order.state)
    if state in {OrderState.paid, OrderState.refunding, OrderState.refunded}:
        if order.provider_trade_no == notice.provider_trade_no and order.amount == notice.amount:
            return Outcome.duplicate
        return conflict("paid_twice")
    if order.channel != notice.provider:
        return conflict("channel_mismatch")
    if state == OrderState.closed:
        return conflict("order_closed")
    if notice.amount != order.amount:
        return conflict("amount_mismatch")
    credits.record_payment(
        session,
        order,
        amount=notice.amount,
        provider_trade_no=notice.provider_trade_no,
        paid_at=notice.paid_at or event.received_at,
    )
    return Outcome.paid
