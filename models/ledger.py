"""The append-only ledger of balanced entries for every movement of money and gas.

Units: ``fen`` for money, ``gas`` for 0.01 m³. Each entry's lines sum to zero per
unit. Accounts (``LedgerLine.account``) and what their balance means:

=================== ===== ==========================================================
account             unit  balance
=================== ===== ==========================================================
provider_clearing   fen   money a provider holds for us (per channel): paid − refunded
gas_liability       fen   − value of gas paid for and not yet refunded
gas_sold            gas   − gas sold and not refunded
awaiting_load       gas   credits paid, not on a card yet (per meter)
on_card             gas   credits written to a card, not yet taken by the meter
applied             gas   credits the meter has taken
=================== ===== ==========================================================

The ledger tables are append-only: database triggers (created by the migrations)
refuse UPDATE and DELETE. Corrections are new entries.
:func:`check` verifies the invariants and ties the ledger to the orders and credits.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, String, func, select
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from models.base import Base, BigIntPK, UTCDateTime, utcnow
from models.errors import LedgerError
from models.orders import Credit, Order, Refund
from models.states import CreditState, OrderState, RefundState


class Unit(StrEnum):
    fen = "fen"
    gas = "gas"


class LedgerAccount(StrEnum):
    provider_clearing = "provider_clearing"
    gas_liability = "gas_liability"
    gas_sold = "gas_sold"
    awaiting_load = "awaiting_load"
    on_card = "on_card"
    applied = "applied"


ACCOUNT_UNITS: dict[LedgerAccount, Unit] = {
    LedgerAccount.provider_clearing: Unit.fen,
    LedgerAccount.gas_liability: Unit.fen,
    LedgerAccount.gas_sold: Unit.gas,
    LedgerAccount.awaiting_load: Unit.gas,
    LedgerAccount.on_card: Unit.gas,
    LedgerAccount.applied: Unit.gas,
}


class LedgerEntry(Base):
    """One balanced movement: a payment, a load, an application, a refund."""

    __tablename__ = "ledger_entry"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    #: "payment", "load", "apply", "refund"
    kind: Mapped[str] = mapped_column(String(24))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), index=True, default=None)
    memo: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)

    lines: Mapped[list[LedgerLine]] = relationship(back_populates="entry")


class LedgerLine(Base):
    __tablename__ = "ledger_line"
    __table_args__ = (CheckConstraint("amount <> 0", name="amount_nonzero"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    entry_id: Mapped[int] = mapped_column(ForeignKey("ledger_entry.id"), index=True)
    account: Mapped[str] = mapped_column(String(24))
    unit: Mapped[str] = mapped_column(String(8))
    #: signed: fen or 0.01 m³
    amount: Mapped[int] = mapped_column(BigInteger)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), default=None)
    credit_id: Mapped[int | None] = mapped_column(ForeignKey("credit.id"), default=None)
    meter_id: Mapped[int | None] = mapped_column(ForeignKey("meter.id"), index=True, default=None)
    #: payment channel for money lines
    channel: Mapped[str | None] = mapped_column(String(16), default=None)

    entry: Mapped[LedgerEntry] = relationship(back_populates="lines")


@dataclass(frozen=True)
class Line:
    """A line to post; see :func:`post`."""

    account: LedgerAccount
    amount: int
    order_id: int | None = None
    credit_id: int | None = None
    meter_id: int | None = None
    channel: str | None = None


def post(
    session: Session, kind: str, lines: list[Line], *, order_id: int | None = None, memo: str = ""
) -> LedgerEntry:
    """Append one entry; refuse it unless its lines balance per unit."""
    totals: dict[Unit, int] = defaultdict(int)
    for line in lines:
        if not isinstance(line.amount, int) or isinstance(line.amount, bool) or line.amount == 0:
            raise LedgerError(f"ledger amounts are non-zero integers, got {line.amount!r}")
        totals[ACCOUNT_UNITS[line.account]] += line.amount
    unbalanced = {unit.value: total for unit, total in totals.items() if total != 0}
    if not lines or unbalanced:
        raise LedgerError(f"unbalanced ledger entry {kind}: {unbalanced}", totals=unbalanced)
    entry = LedgerEntry(kind=kind, order_id=order_id, memo=memo)
    for line in lines:
        entry.lines.append(
            LedgerLine(
                account=line.account.value,
                unit=ACCOUNT_UNITS[line.account].value,
                amount=line.amount,
                order_id=line.order_id,
                credit_id=line.credit_id,
                meter_id=line.meter_id,
                channel=line.channel,
            )
        )
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True)
class Problem:
    """One broken invariant, with what a person needs to find it."""

    rule: str
    subject: str
    detail: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.subject}: {self.detail}"


def check(session: Session) -> list[Problem]:
    """Verify the ledger's invariants; an empty list means the books balance.

    1. every entry balances per unit, every line's account and unit are known;
    2. per order: paid = credited value + refunded, and nothing is booked for an
       order that was never paid;
    3. per meter: each gas account's balance equals the credits in that state
       (awaiting_load, loaded = on_card, applied), and none is negative;
    4. per channel: provider clearing = paid − refunded.
    """
    problems: list[Problem] = []

    # 1. entries balance, accounts and units are known
    known = {(a.value, u.value) for a, u in ACCOUNT_UNITS.items()}
    for account, unit, count in session.execute(
        select(LedgerLine.account, LedgerLine.unit, func.count()).group_by(
            LedgerLine.account, LedgerLine.unit
        )
    ):
        if (account, unit) not in known:
            problems.append(Problem("unknown-account", f"{account}/{unit}", f"{count} lines"))
    for entry_id, kind, unit, total in session.execute(
        select(LedgerEntry.id, LedgerEntry.kind, LedgerLine.unit, func.sum(LedgerLine.amount))
        .join(LedgerLine)
        .group_by(LedgerEntry.id, LedgerEntry.kind, LedgerLine.unit)
        .having(func.sum(LedgerLine.amount) != 0)
    ):
        problems.append(
            Problem("unbalanced-entry", f"entry {entry_id} ({kind})", f"{unit} sums to {total}")
        )

    def balances(account: LedgerAccount, key: str) -> dict[object, int]:
        column = getattr(LedgerLine, key)
        rows = session.execute(
            select(column, func.sum(LedgerLine.amount))
            .where(LedgerLine.account == account.value)
            .group_by(column)
        )
        return {k: int(v) for k, v in rows}

    # 2. per order
    paid_in = balances(LedgerAccount.provider_clearing, "order_id")
    liability = balances(LedgerAccount.gas_liability, "order_id")
    refunded_by_order: dict[int, int] = defaultdict(int)
    for order_id, amount in session.execute(
        select(Refund.order_id, func.sum(Refund.amount))
        .where(Refund.state == RefundState.succeeded.value)
        .group_by(Refund.order_id)
    ):
        refunded_by_order[order_id] = int(amount)
    credit_value: dict[int, int] = defaultdict(int)
    for credit_order_id, value in session.execute(
        select(Credit.order_id, func.sum(Credit.value))
        .where(Credit.order_id.is_not(None), Credit.state != CreditState.refunded.value)
        .group_by(Credit.order_id)
    ):
        if credit_order_id is not None:
            credit_value[credit_order_id] = int(value)
    booked_states = {OrderState.paid, OrderState.refunding, OrderState.refunded}
    booked_ids = [k for k in set(paid_in) | set(liability) if isinstance(k, int)]
    for order in session.scalars(
        select(Order)
        .where(Order.state.in_([s.value for s in booked_states]) | Order.id.in_(booked_ids))
        .order_by(Order.id)
    ):
        clearing = paid_in.get(order.id, 0)
        refunded = refunded_by_order.get(order.id, 0)
        subject = f"order {order.order_no}"
        if OrderState(order.state) not in booked_states:
            problems.append(
                Problem(
                    "unpaid-order-booked", subject, f"state {order.state} but {clearing} fen booked"
                )
            )
            continue
        if clearing != order.amount - refunded:
            problems.append(
                Problem(
                    "order-paid",
                    subject,
                    f"clearing {clearing} fen, expected paid {order.amount} − refunded {refunded}",
                )
            )
        if order.amount != credit_value.get(order.id, 0) + refunded:
            problems.append(
                Problem(
                    "order-credited",
                    subject,
                    f"paid {order.amount} ≠ credited "
                    f"{credit_value.get(order.id, 0)} + refunded {refunded}",
                )
            )
        if -liability.get(order.id, 0) != credit_value.get(order.id, 0):
            problems.append(
                Problem(
                    "order-liability",
                    subject,
                    f"liability {-liability.get(order.id, 0)} fen ≠ credited "
                    f"{credit_value.get(order.id, 0)}",
                )
            )

    # 3. per meter, gas by state
    for account, state in (
        (LedgerAccount.awaiting_load, CreditState.awaiting_load),
        (LedgerAccount.on_card, CreditState.loaded),
        (LedgerAccount.applied, CreditState.applied),
    ):
        booked = balances(account, "meter_id")
        expected: dict[object, int] = {
            meter_id: int(volume)
            for meter_id, volume in session.execute(
                select(Credit.meter_id, func.sum(Credit.volume))
                .where(Credit.state == state.value)
                .group_by(Credit.meter_id)
            )
        }
        for meter_id in sorted(set(booked) | set(expected), key=lambda m: (m is None, m)):
            have, want = booked.get(meter_id, 0), expected.get(meter_id, 0)
            if have < 0:
                problems.append(
                    Problem("negative-balance", f"meter {meter_id}", f"{account.value} is {have}")
                )
            if have != want:
                problems.append(
                    Problem(
                        "meter-gas",
                        f"meter {meter_id}",
                        f"{account.value} {have} ≠ {state.value} credits {want}",
                    )
                )

    # 4. per channel
    clearing_by_channel = balances(LedgerAccount.provider_clearing, "channel")
    expected_by_channel: dict[object, int] = defaultdict(int)
    for channel, amount in session.execute(
        select(Order.channel, func.sum(Order.amount))
        .where(Order.state.in_([s.value for s in booked_states]))
        .group_by(Order.channel)
    ):
        expected_by_channel[channel] += int(amount)
    for refund_channel, amount in session.execute(
        select(Order.channel, func.sum(Refund.amount))
        .join(Order, Refund.order_id == Order.id)
        .where(Refund.state == RefundState.succeeded.value)
        .group_by(Order.channel)
    ):
        expected_by_channel[refund_channel] -= int(amount)
    for key in sorted(set(clearing_by_channel) | set(expected_by_channel), key=str):
        have, want = clearing_by_channel.get(key, 0), expected_by_channel.get(key, 0)
        if have != want:
            problems.append(
                Problem(
                    "channel-clearing",
                    f"channel {key}",
                    f"clearing {have} fen ≠ paid − refunded {want}",
                )
            )
    return problems
