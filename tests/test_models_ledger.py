from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models import credits, ledger
from models.base import utcnow
from models.errors import DomainError, LedgerError
from models.ledger import LedgerAccount, LedgerLine, Line
from models.orders import Order, Refund
from models.states import OrderState, RefundState
from tests.factories import gen_account, gen_order, gen_tariff


def _paid_order(db: Session, **overrides: object) -> Order:
    account = gen_account(db)
    tariff = gen_tariff(db, account.branch)
    order = gen_order(db, account.meters[0], tariff, state=OrderState.paying.value, **overrides)
    credits.record_payment(db, order, amount=order.amount, provider_trade_no="T1", paid_at=utcnow())
    return order


def test_post_refuses_unbalanced(db: Session) -> None:
    with pytest.raises(LedgerError):
        ledger.post(db, "payment", [Line(LedgerAccount.provider_clearing, 100)])
    with pytest.raises(LedgerError):  # fen and gas never offset each other
        ledger.post(
            db,
            "payment",
            [Line(LedgerAccount.provider_clearing, 100), Line(LedgerAccount.gas_sold, -100)],
        )
    assert db.query(LedgerLine).count() == 0


def test_full_loop_balances(db: Session) -> None:
    order = _paid_order(db)
    assert order.state == "paid"
    credit = order.credit
    assert credit is not None and credit.state == "awaiting_load"
    assert ledger.check(db) == []
    credits.mark_loaded(db, [credit], purchase_count=1, at=utcnow())
    assert ledger.check(db) == []
    credits.mark_applied(db, [credit], at=utcnow())
    assert ledger.check(db) == []
    assert credit.state == "applied"


def test_refund_balances(db: Session) -> None:
    order = _paid_order(db)
    assert order.credit is not None
    order.transition_to(OrderState.refunding)
    refund = Refund(
        refund_no="RF1",
        order_id=order.id,
        credit_id=order.credit.id,
        amount=order.amount,
        state=RefundState.succeeded.value,
    )
    db.add(refund)
    credits.refund_credit(db, order.credit, channel=order.channel)
    order.transition_to(OrderState.refunded)
    db.flush()
    assert ledger.check(db) == []


def test_payment_amount_mismatch_changes_nothing(db: Session) -> None:
    account = gen_account(db)
    order = gen_order(db, account.meters[0], gen_tariff(db, account.branch))
    with pytest.raises(DomainError) as raised:
        credits.record_payment(
            db, order, amount=order.amount + 1, provider_trade_no="X", paid_at=utcnow()
        )
    assert raised.value.code == "amount_mismatch"
    assert order.state == "created" and order.credit is None
    assert db.query(LedgerLine).count() == 0


def test_check_finds_unbalanced_entry(db: Session) -> None:
    order = _paid_order(db)
    entry_id = db.scalar(select(LedgerLine.entry_id).where(LedgerLine.order_id == order.id))
    db.execute(
        text(
            "INSERT INTO ledger_line (entry_id, account, unit, amount) "
            "VALUES (:e, 'provider_clearing', 'fen', 5)"
        ),
        {"e": entry_id},
    )
    problems = ledger.check(db)
    rules = {p.rule for p in problems}
    assert "unbalanced-entry" in rules
    assert any(f"entry {entry_id}" in p.subject for p in problems)


def test_check_finds_state_without_booking(db: Session) -> None:
    order = _paid_order(db)
    assert order.credit is not None
    # a credit marked loaded without its ledger entry: the books no longer match
    db.execute(text("UPDATE credit SET state = 'loaded' WHERE id = :c"), {"c": order.credit.id})
    db.expire_all()
    rules = {p.rule for p in ledger.check(db)}
    assert "meter-gas" in rules


def test_check_finds_order_paid_without_money(db: Session) -> None:
    account = gen_account(db)
    gen_order(db, account.meters[0], gen_tariff(db, account.branch), state="paid")
    rules = {p.rule for p in ledger.check(db)}
    assert {"order-paid", "order-credited", "channel-clearing"} <= rules


def test_ledger_is_append_only(db: Session) -> None:
    _paid_order(db)
    line_id = db.query(LedgerLine.id).limit(1).scalar()
    with pytest.raises(DBAPIError, match="append-only"), db.begin_nested():
        db.execute(text("UPDATE ledger_line SET amount = 1 WHERE id = :i"), {"i": line_id})
    with pytest.raises(DBAPIError, match="append-only"), db.begin_nested():
        db.execute(text("DELETE FROM ledger_line WHERE id = :i"), {"i": line_id})
    with pytest.raises(DBAPIError, match="append-only"), db.begin_nested():
        db.execute(text("DELETE FROM ledger_entry"))
    assert ledger.check(db) == []
