"""Orders and payment notices: paid exactly once, conflicts for staff, nothing dropped."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models import ledger
from models.base import utcnow
from models.errors import DomainError
from models.ledger import LedgerLine
from models.ordering import (
    NoticeStatus,
    Outcome,
    PaymentNotice,
    apply_notice,
    create_order,
    record_event,
)
from models.orders import Credit, Order, PaymentConflict, PaymentEvent
from tests.factories import gen_account, gen_tariff

TTL = dt.timedelta(minutes=15)


def _order(db: Session, **overrides: object) -> Order:
    account = gen_account(db)
    tariff = gen_tariff(db, account.branch)
    fields: dict[str, object] = {
        "meter": account.meters[0],
        "tariff_id": tariff.id,
        "volume": 10000,
        "amount": 26100,
        "quote": {"parts": []},
        "channel": "alipay",
        "now": utcnow(),
        "ttl": TTL,
    }
    fields.update(overrides)
    return create_order(db, **fields)  # type: ignore[arg-type]


def _notice(order: Order, **overrides: object) -> PaymentNotice:
    fields: dict[str, object] = {
        "provider": order.channel,
        "order_no": order.order_no,
        "provider_trade_no": "T-1",
        "status": NoticeStatus.paid,
        "amount": order.amount,
        "paid_at": utcnow(),
    }
    fields.update(overrides)
    return PaymentNotice(**fields)  # type: ignore[arg-type]


def _apply(db: Session, notice: PaymentNotice) -> Outcome:
    event = record_event(
        db, provider=notice.provider, kind="notify", body=b"raw", headers={}, verified=True
    )
    return apply_notice(db, notice, event=event)


def _count(db: Session, model: type) -> int:
    return db.scalar(select(func.count()).select_from(model)) or 0


def test_paid_exactly_once(db: Session) -> None:
    order = _order(db)
    assert _apply(db, _notice(order)) is Outcome.paid
    assert order.state == "paid" and order.provider_trade_no == "T-1"
    assert _apply(db, _notice(order)) is Outcome.duplicate
    assert _count(db, Credit) == 1
    assert ledger.check(db) == []
    outcomes = db.scalars(select(PaymentEvent.outcome).order_by(PaymentEvent.id)).all()
    assert outcomes == ["paid", "duplicate"]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"amount": 26000}, "amount_mismatch"),
        ({"order_no": "NO-SUCH-ORDER"}, "unknown_order"),
        ({"provider": "wechat"}, "channel_mismatch"),
    ],
)
def test_misfits_become_conflicts(db: Session, change: dict[str, object], reason: str) -> None:
    order = _order(db)
    assert _apply(db, _notice(order, **change)) is Outcome.conflict
    conflict = db.scalar(select(PaymentConflict))
    assert conflict is not None and conflict.reason == reason and conflict.state == "open"
    assert conflict.amount == _notice(order, **change).amount
    assert order.state == "created" and _count(db, Credit) == 0
    assert _count(db, LedgerLine) == 0


def test_payment_for_closed_order_is_a_conflict(db: Session) -> None:
    order = _order(db)
    assert _apply(db, _notice(order, status=NoticeStatus.closed)) is Outcome.closed
    assert order.state == "closed"
    assert _apply(db, _notice(order)) is Outcome.conflict
    conflict = db.scalar(select(PaymentConflict))
    assert conflict is not None and conflict.reason == "order_closed"
    assert conflict.order_id == order.id
    assert order.state == "closed" and _count(db, Credit) == 0


def test_second_payment_with_another_trade_is_a_conflict(db: Session) -> None:
    order = _order(db)
    _apply(db, _notice(order))
    assert _apply(db, _notice(order, provider_trade_no="T-2")) is Outcome.conflict
    conflict = db.scalar(select(PaymentConflict))
    assert conflict is not None and conflict.reason == "paid_twice"
    assert _count(db, Credit) == 1


def test_failure_after_success_is_ignored(db: Session) -> None:
    order = _order(db)
    _apply(db, _notice(order))
    for status in (NoticeStatus.failed, NoticeStatus.closed):
        assert _apply(db, _notice(order, status=status)) is Outcome.ignored
    assert order.state == "paid"
    assert ledger.check(db) == []


def test_idempotency_key(db: Session) -> None:
    order = _order(db, idempotency_key="k-1")
    again = create_order(
        db,
        meter=order.meter,
        tariff_id=order.tariff_id,
        volume=order.volume,
        amount=order.amount,
        quote={},
        channel="alipay",
        now=utcnow(),
        ttl=TTL,
        idempotency_key="k-1",
    )
    assert again.id == order.id and _count(db, Order) == 1
    with pytest.raises(DomainError) as raised:
        create_order(
            db,
            meter=order.meter,
            tariff_id=order.tariff_id,
            volume=order.volume,
            amount=order.amount + 1,
            quote={},
            channel="alipay",
            now=utcnow(),
            ttl=TTL,
            idempotency_key="k-1",
        )
    assert raised.value.code == "idempotency_key_reused"


def test_concurrent_duplicate_notices_pay_once(fresh_engine: Engine) -> None:
    """Eight workers deliver the same notice at once; one pays, none doubles anything."""
    with Session(fresh_engine) as s:
        order = _order(s)
        s.commit()
        notice = _notice(order)
    outcomes: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def deliver() -> None:
        barrier.wait()
        for _attempt in range(20):  # a provider retries what we refused
            try:
                with Session(fresh_engine) as s, s.begin():
                    outcomes.append(_apply(s, notice).value)
                return
            except DBAPIError as error:  # SQLite: database locked / snapshot busy
                if fresh_engine.dialect.name == "postgresql":
                    errors.append(error)
                    return
        errors.append(RuntimeError("gave up"))

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(outcomes) == ["duplicate"] * 7 + ["paid"]
    with Session(fresh_engine) as s:
        assert _count(s, Credit) == 1
        assert ledger.check(s) == []
        assert s.scalar(select(func.count()).select_from(PaymentEvent)) == 8
