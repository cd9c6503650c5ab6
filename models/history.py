"""What a resident sees after the second factor: the household's cycle and tier, each
meter's state (last purchase, gas waiting to be loaded, last report), purchase history.

Read-only: nothing here changes the database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from models.accounts import Account, Meter, MeterReport
from models.clock import cycle_start, local_date
from models.errors import QuoteError
from models.orders import Credit, Order
from models.quotes import COUNTED_ORDER_STATES, cycle_volume, schedule_for
from models.states import CreditState, MeterStatus
from models.tariffs import tariff_in_force

#: how many purchases the history shows
HISTORY_LENGTH = 20


@dataclass(frozen=True)
class CycleStanding:
    """Where the household stands in its yearly tier cycle."""

    cycle_start: dt.date
    #: gas bought this cycle over all the household's meters, 0.01 m³
    volume: int
    #: 1-based tier the next purchase starts in
    tier: int
    tiers: int
    #: yuan/m³ of that tier (before percentage discounts)
    price: Decimal
    #: cycle volume where that tier ends (after a tier extension), None for the last
    tier_upper: int | None


@dataclass(frozen=True)
class Purchase:
    """One order as the account's history shows it."""

    order_no: str
    meter_no: str
    #: an :class:`models.states.OrderState` value
    state: str
    amount: int
    volume: int
    channel: str
    created_at: dt.datetime
    paid_at: dt.datetime | None
    #: a :class:`models.states.CreditState` value, None before payment
    credit_state: str | None


@dataclass(frozen=True)
class MeterState:
    """One meter after the second factor: its purchases, gas on the way, last report."""

    meter_no: str
    kind: str
    status: str
    last_purchase: Purchase | None
    #: paid gas not yet on the card, 0.01 m³, and how many purchases it is
    awaiting_load_volume: int
    awaiting_load_count: int
    #: gas left at the last report carried back by the card, 0.01 m³
    last_remaining: int | None
    last_report_at: dt.datetime | None
    #: the valve at the last report (None: no report yet); closed means no gas flows
    valve_open: bool | None = None
    #: alarms at the last report: "leak", "low_battery", "tamper"
    alarms: tuple[str, ...] = ()


@dataclass(frozen=True)
class AccountDetails:
    """Everything the verified page shows for one account."""

    account_no: str
    standing: CycleStanding | None
    meters: tuple[MeterState, ...]
    purchases: tuple[Purchase, ...]


def cycle_standing(session: Session, account: Account, at: dt.datetime) -> CycleStanding | None:
    """The household's cycle volume and the tier it is in at ``at``; None without a tariff."""
    tariff = tariff_in_force(
        session, branch_id=account.branch_id, category_id=account.category_id, on=local_date(at)
    )
    if tariff is None:
        return None
    try:
        schedule, _kinds = schedule_for(tariff, account)
    except QuoteError:
        return None
    start = cycle_start(local_date(at), tariff.cycle_start_month)
    volume = cycle_volume(session, account, start)
    position = next(
        i
        for i, tier in enumerate(schedule.tiers)
        if tier.upper_bound is None or volume < tier.upper_bound
    )
    tier = schedule.tiers[position]
    return CycleStanding(
        cycle_start=start,
        volume=volume,
        tier=position + 1,
        tiers=len(schedule.tiers),
        price=tier.price,
        tier_upper=tier.upper_bound,
    )


def _purchase(order: Order, meter_numbers: dict[int, str]) -> Purchase:
    return Purchase(
        order_no=order.order_no,
        meter_no=meter_numbers.get(order.meter_id, ""),
        state=order.state,
        amount=order.amount,
        volume=order.volume,
        channel=order.channel,
        created_at=order.created_at,
        paid_at=order.paid_at,
        credit_state=order.credit.state if order.credit is not None else None,
    )


def purchases(session: Session, account: Account, *, limit: int = HISTORY_LENGTH) -> list[Purchase]:
    """The account's orders, newest first."""
    numbers = {m.id: m.meter_no for m in account.meters}
    orders = session.scalars(
        select(Order)
        .where(Order.account_id == account.id)
        .options(selectinload(Order.credit))
        .order_by(Order.created_at.desc(), Order.id.desc())
        .limit(limit)
    )
    return [_purchase(order, numbers) for order in orders]


def meter_state(session: Session, meter: Meter) -> MeterState:
    """A meter's last paid purchase, the paid gas waiting to be loaded, its last report."""
    last = session.scalar(
        select(Order)
        .where(Order.meter_id == meter.id, Order.state.in_(COUNTED_ORDER_STATES))
        .options(selectinload(Order.credit))
        .order_by(Order.paid_at.desc(), Order.id.desc())
        .limit(1)
    )
    waiting_volume, waiting_count = session.execute(
        select(func.coalesce(func.sum(Credit.volume), 0), func.count(Credit.id)).where(
            Credit.meter_id == meter.id, Credit.state == CreditState.awaiting_load.value
        )
    ).one()
    report = session.scalar(
        select(MeterReport)
        .where(MeterReport.meter_id == meter.id)
        .order_by(MeterReport.reported_at.desc(), MeterReport.id.desc())
        .limit(1)
    )
    return MeterState(
        meter_no=meter.meter_no,
        kind=meter.kind,
        status=meter.status,
        last_purchase=_purchase(last, {meter.id: meter.meter_no}) if last else None,
        awaiting_load_volume=int(waiting_volume),
        awaiting_load_count=int(waiting_count),
        last_remaining=meter.last_remaining,
        last_report_at=meter.last_report_at,
        valve_open=report.valve_open if report is not None else None,
        alarms=tuple(a for a in report.alarms.split(",") if a) if report is not None else (),
    )


def account_details(session: Session, account_no: str, *, at: dt.datetime) -> AccountDetails | None:
    """The verified view of the account with this 户号, or None if there is none."""
    account = session.scalar(
        select(Account)
        .where(Account.account_no == account_no)
        .options(selectinload(Account.meters))
    )
    if account is None:
        return None
    return AccountDetails(
        account_no=account.account_no,
        standing=cycle_standing(session, account, at),
        meters=tuple(
            meter_state(session, m) for m in account.meters if m.status != MeterStatus.removed
        ),
        purchases=tuple(purchases(session, account)),
    )
