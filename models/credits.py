"""Money → gas: the operations that move an order's value through credits and the ledger.

Each takes a session and explicit arguments, flushes, and never commits; the
caller holds the row locks (``select(...).with_for_update()``) it needs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from sqlalchemy.orm import Session

from models import ledger
from models.errors import DomainError
from models.ledger import LedgerAccount, Line
from models.orders import Credit, Order
from models.states import CreditState, OrderState


def record_payment(
    session: Session, order: Order, *, amount: int, provider_trade_no: str, paid_at: dt.datetime
) -> Credit:
    """Move ``order`` to paid, create its credit (awaiting_load) and book both.

    Refuses (changing nothing) an amount that differs from the order's or an order
    that cannot become paid; the caller turns those into payment conflicts.
    """
    if amount != order.amount:
        raise DomainError(
            f"paid {amount} fen for an order of {order.amount} fen", code="amount_mismatch"
        )
    order.transition_to(OrderState.paid)
    order.provider_trade_no = provider_trade_no
    order.paid_at = paid_at
    # order_id, not order=: the back-reference would first load the order's (absent) credit
    credit = Credit(
        order_id=order.id, meter_id=order.meter_id, volume=order.volume, value=order.amount
    )
    session.add(credit)
    session.flush()
    ledger.post(
        session,
        "payment",
        [
            Line(
                LedgerAccount.provider_clearing,
                order.amount,
                order_id=order.id,
                channel=order.channel,
            ),
            Line(LedgerAccount.gas_liability, -order.amount, order_id=order.id),
            Line(
                LedgerAccount.gas_sold,
                -order.volume,
                order_id=order.id,
                credit_id=credit.id,
                meter_id=order.meter_id,
            ),
            Line(
                LedgerAccount.awaiting_load,
                order.volume,
                order_id=order.id,
                credit_id=credit.id,
                meter_id=order.meter_id,
            ),
        ],
        order_id=order.id,
        memo=f"paid via {order.channel} {provider_trade_no}",
    )
    return credit


def mark_loaded(
    session: Session, credits: Sequence[Credit], *, purchase_count: int, at: dt.datetime
) -> None:
    """Credits a kiosk has written to the card and read back: awaiting_load → loaded."""
    for credit in credits:
        credit.transition_to(CreditState.loaded)
        credit.purchase_count = purchase_count
        credit.loaded_at = at
        ledger.post(
            session,
            "load",
            [
                Line(
                    LedgerAccount.awaiting_load,
                    -credit.volume,
                    order_id=credit.order_id,
                    credit_id=credit.id,
                    meter_id=credit.meter_id,
                ),
                Line(
                    LedgerAccount.on_card,
                    credit.volume,
                    order_id=credit.order_id,
                    credit_id=credit.id,
                    meter_id=credit.meter_id,
                ),
            ],
            order_id=credit.order_id,
        )


def mark_applied(session: Session, credits: Sequence[Credit], *, at: dt.datetime) -> None:
    """Credits the meter has taken, as its report says: loaded → applied."""
    for credit in credits:
        credit.transition_to(CreditState.applied)
        credit.applied_at = at
        ledger.post(
            session,
            "apply",
            [
                Line(
                    LedgerAccount.on_card,
                    -credit.volume,
                    order_id=credit.order_id,
                    credit_id=credit.id,
                    meter_id=credit.meter_id,
                ),
                Line(
                    LedgerAccount.applied,
                    credit.volume,
                    order_id=credit.order_id,
                    credit_id=credit.id,
                    meter_id=credit.meter_id,
                ),
            ],
            order_id=credit.order_id,
        )


def refund_credit(session: Session, credit: Credit, *, channel: str) -> None:
    """Book the refund of a credit that never reached a card: awaiting_load → refunded.

    The caller records the provider's refund (a :class:`~models.orders.Refund` that
    succeeded) and moves the order on; this books money and gas back.
    """
    credit.transition_to(CreditState.refunded)
    ledger.post(
        session,
        "refund",
        [
            Line(
                LedgerAccount.provider_clearing,
                -credit.value,
                order_id=credit.order_id,
                channel=channel,
            ),
            Line(LedgerAccount.gas_liability, credit.value, order_id=credit.order_id),
            Line(
                LedgerAccount.awaiting_load,
                -credit.volume,
                order_id=credit.order_id,
                credit_id=credit.id,
                meter_id=credit.meter_id,
            ),
            Line(
                LedgerAccount.gas_sold,
                credit.volume,
                order_id=credit.order_id,
                credit_id=credit.id,
                meter_id=credit.meter_id,
            ),
        ],
        order_id=credit.order_id,
    )
