"""Quotes: what a purchase of gas costs under the meter's tariff (tiers, limits, discounts).

The arithmetic is pure (:class:`Schedule`, :func:`price_purchase`, :func:`price_request`)
and knows nothing of the database; :func:`quote` gathers its inputs from the database.
The rounding rule lives in :func:`part_cost` and nowhere else (see docs/tariffs.md).
"""

from __future__ import annotations

import datetime as dt
import decimal
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models.accounts import Account, Meter
from models.clock import cycle_start as cycle_start_of
from models.clock import local_date, local_midnight_utc
from models.errors import DomainError, NotFound, QuoteError
from models.orders import Credit, Order
from models.states import CreditState, MeterStatus, OrderState
from models.tariffs import (
    DiscountEligibility,
    DiscountKind,
    DiscountPolicy,
    Tariff,
    tariff_in_force,
)

#: Orders whose gas counts towards the household's tiers (paid, even if a refund is pending).
COUNTED_ORDER_STATES = (OrderState.paid.value, OrderState.refunding.value)
#: Credits on their way to a meter: they take up room in it before it reports them.
INBOUND_CREDIT_STATES = (CreditState.awaiting_load.value, CreditState.loaded.value)

# Volumes times prices are exact; a wide context keeps them so whatever the magnitudes.
_EXACT = decimal.Context(prec=80, rounding=ROUND_HALF_UP)
_ONE = Decimal(1)


# --- the pure arithmetic -------------------------------------------------------------


@dataclass(frozen=True)
class Tier:
    """One band of a schedule: cumulative cycle volume up to ``upper_bound`` at ``price``."""

    #: cumulative cycle volume where the band ends, 0.01 m³; None for the last band
    upper_bound: int | None
    #: yuan per m³, as listed by the tariff
    price: Decimal


@dataclass(frozen=True)
class Schedule:
    """The prices one household pays this cycle: its tiers after discounts are applied."""

    #: bands in order; bounds strictly increasing, only the last one open (None)
    tiers: tuple[Tier, ...]
    #: multiplier on every charged part (1 − percent off / 100)
    factor: Decimal = _ONE
    #: the first this-much of the cycle's cumulative purchases is free, 0.01 m³
    free_allowance: int = 0

    def __post_init__(self) -> None:
        if not self.tiers or self.tiers[-1].upper_bound is not None:
            raise ValueError("a schedule needs tiers, the last one open-ended")
        bounds = [t.upper_bound for t in self.tiers[:-1]]
        known = [b for b in bounds if b is not None]
        if len(known) < len(bounds) or any(b <= 0 for b in known) or known != sorted(set(known)):
            raise ValueError(f"tier bounds must be positive and increasing: {bounds}")
        if any(t.price < 0 for t in self.tiers):
            raise ValueError("tier prices must not be negative")
        if not (0 < self.factor <= 1):
            raise ValueError(f"discount factor must be in (0, 1], not {self.factor}")
        if self.free_allowance < 0:
            raise ValueError("free allowance must not be negative")


@dataclass(frozen=True)
class Limits:
    """How much one purchase may be: the tariff's minimum and maximum, the meter's room."""

    #: 0.01 m³
    min_purchase: int
    #: 0.01 m³
    max_purchase: int
    #: what the meter can still take (capacity less gas in it or on its way), 0.01 m³
    room: int


@dataclass(frozen=True)
class QuotePart:
    """The slice of a purchase that falls in one tier (and on one side of a free allowance)."""

    #: 1-based tier position
    tier: int
    #: 0.01 m³
    volume: int
    #: yuan per m³ as listed by the tariff (before discount)
    price: Decimal
    #: fen charged for this part
    amount: int
    #: inside a free allowance
    free: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the price as a decimal string."""
        return {
            "tier": self.tier,
            "volume": self.volume,
            "price": price_text(self.price),
            "amount": self.amount,
            "free": self.free,
        }


def part_cost(volume: int, price: Decimal, factor: Decimal = _ONE) -> int:
    """The one rounding rule: fen for ``volume`` (0.01 m³) at ``price`` yuan/m³ × ``factor``.

    0.01 m³ × p yuan/m³ is exactly p fen; the product is rounded once, half up, to a fen.
    """
    exact = _EXACT.multiply(_EXACT.multiply(Decimal(volume), price), factor)
    return int(exact.quantize(_ONE, rounding=ROUND_HALF_UP, context=_EXACT))


def price_purchase(schedule: Schedule, used_before: int, volume: int) -> tuple[QuotePart, ...]:
    """Split a purchase of ``volume`` after ``used_before`` this cycle into priced parts.

    A part ends wherever a tier ends or the free allowance runs out; each part is
    rounded on its own (:func:`part_cost`), so the parts add up to the total.
    """
    if used_before < 0 or volume < 0:
        raise ValueError("volumes must not be negative")
    parts: list[QuotePart] = []
    position, end = used_before, used_before + volume
    index = 0
    while position < end:
        while (bound := schedule.tiers[index].upper_bound) is not None and bound <= position:
            index += 1
        tier = schedule.tiers[index]
        stop = end if tier.upper_bound is None else min(end, tier.upper_bound)
        free = position < schedule.free_allowance
        if free:
            stop = min(stop, schedule.free_allowance)
        size = stop - position
        amount = 0 if free else part_cost(size, tier.price, schedule.factor)
        parts.append(QuotePart(index + 1, size, tier.price, amount, free))
        position = stop
    return tuple(parts)


def purchase_cost(schedule: Schedule, used_before: int, volume: int) -> int:
    """Fen a purchase of ``volume`` costs after ``used_before`` this cycle."""
    return sum(part.amount for part in price_purchase(schedule, used_before, volume))


def volume_for_amount(schedule: Schedule, used_before: int, amount: int, upper: int) -> int:
    """The largest volume up to ``upper`` whose cost is within ``amount`` fen.

    The cost never falls as the volume grows, so a binary search finds it.
    """
    low, high = 0, upper  # cost(low) <= amount is the invariant; 0 costs nothing
    while low < high:
        middle = (low + high + 1) // 2
        if purchase_cost(schedule, used_before, middle) <= amount:
            low = middle
        else:
            high = middle - 1
    return low


def price_request(
    schedule: Schedule,
    used_before: int,
    limits: Limits,
    *,
    volume: int | None = None,
    amount: int | None = None,
) -> tuple[QuotePart, ...]:
    """Price a purchase asked for by volume or by amount, within the limits, or refuse it.

    By amount: the largest volume whose cost is within the amount, charged at that cost.
    """
    if (volume is None) == (amount is None):
        raise QuoteError("ask for either a volume or an amount", code="volume_or_amount")
    room = max(limits.room, 0)
    if volume is not None:
        if volume < limits.min_purchase:
            raise QuoteError(
                f"the smallest purchase is {volume_text(limits.min_purchase)}",
                code="below_minimum",
                min_purchase=limits.min_purchase,
            )
        if volume > limits.max_purchase:
            raise QuoteError(
                f"the largest purchase is {volume_text(limits.max_purchase)}",
                code="above_maximum",
                max_purchase=limits.max_purchase,
            )
        if volume > room:
            raise QuoteError(_room_message(room), code="over_capacity", room=room)
        return price_purchase(schedule, used_before, volume)

    assert amount is not None
    if room < limits.min_purchase:
        raise QuoteError(_room_message(room), code="over_capacity", room=room)
    smallest = purchase_cost(schedule, used_before, limits.min_purchase)
    if amount < smallest:
        raise QuoteError(
            f"{money_text(amount)} cannot buy the smallest purchase of "
            f"{volume_text(limits.min_purchase)}, which costs {money_text(smallest)}",
            code="amount_too_small",
            min_purchase=limits.min_purchase,
            min_amount=smallest,
        )
    upper = min(limits.max_purchase, room)
    largest = purchase_cost(schedule, used_before, upper)
    if amount > largest:
        why = "the largest purchase" if upper == limits.max_purchase else "what the meter can take"
        raise QuoteError(
            f"{money_text(amount)} is more than {why}: at most {volume_text(upper)} "
            f"for {money_text(largest)}",
            code="amount_too_large",
            largest_volume=upper,
            largest_amount=largest,
        )
    return price_purchase(
        schedule, used_before, volume_for_amount(schedule, used_before, amount, upper)
    )


def _room_message(room: int) -> str:
    return (
        f"the meter can take at most {volume_text(room)} more now "
        "(its capacity less the gas in it and on its way to it)"
    )


def volume_text(volume: int) -> str:
    """0.01 m³ units as people read them: ``"12.34 m³"``."""
    sign = "-" if volume < 0 else ""
    whole, hundredths = divmod(abs(volume), 100)
    return f"{sign}{whole}.{hundredths:02d} m³"


def money_text(amount: int) -> str:
    """Fen as people read them: ``"123.45 yuan"``."""
    sign = "-" if amount < 0 else ""
    yuan, fen = divmod(abs(amount), 100)
    return f"{sign}{yuan}.{fen:02d} yuan"


def price_text(price: Decimal) -> str:
    """A price without the storage's trailing zeros but with at least two decimals."""
    text = format(price.normalize(), "f")
    whole, _, decimals = text.partition(".")
    return f"{whole}.{decimals.ljust(2, '0')}"


# --- the database side ---------------------------------------------------------------


@dataclass(frozen=True)
class Quote:
    """What a purchase costs for one meter at one moment, with its tier breakdown."""

    account_no: str
    meter_no: str
    tariff_code: str
    #: 0.01 m³, the sum of the parts' volumes
    volume: int
    #: fen, the sum of the parts' amounts
    amount: int
    parts: tuple[QuotePart, ...]
    #: first local day of the tier cycle
    cycle_start: dt.date
    #: the household's purchases this cycle before this one, 0.01 m³
    cycle_volume_before: int
    #: kinds of discount applied, e.g. ("tier_extension",)
    discounts: tuple[str, ...]
    quoted_at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: prices as decimal strings, dates and times in ISO 8601 (times in UTC)."""
        return {
            "account_no": self.account_no,
            "meter_no": self.meter_no,
            "tariff_code": self.tariff_code,
            "volume": self.volume,
            "amount": self.amount,
            "parts": [part.as_dict() for part in self.parts],
            "cycle_start": self.cycle_start.isoformat(),
            "cycle_volume_before": self.cycle_volume_before,
            "discounts": list(self.discounts),
            "quoted_at": self.quoted_at.astimezone(dt.UTC).isoformat(),
        }


def find_meter(session: Session, account_no: str, meter_no: str | None) -> Meter:
    """The meter a resident means: by number within the account, or the account's only one."""
    account = session.scalar(select(Account).where(Account.account_no == account_no))
    if account is None:
        raise NotFound(f"no account {account_no}", code="account_not_found")
    if meter_no is not None:
        for meter in account.meters:
            if meter.meter_no == meter_no:
                return meter
        raise NotFound(f"account {account_no} has no meter {meter_no}", code="meter_not_found")
    if not account.meters:
        raise NotFound(f"account {account_no} has no meter", code="meter_not_found")
    if len(account.meters) > 1:
        numbers = ", ".join(m.meter_no for m in account.meters)
        raise DomainError(
            f"account {account_no} has several meters ({numbers}): say which",
            code="meter_required",
        )
    return account.meters[0]


def cycle_volume(session: Session, account: Account, cycle_start: dt.date) -> int:
    """The household's purchases in the yearly cycle from ``cycle_start``, over all its meters.

    Opening balances carried over for that cycle plus paid (or refunding) orders
    paid within it, by local date.
    """
    opening = session.scalar(
        select(func.coalesce(func.sum(Meter.opening_cycle_volume), 0)).where(
            Meter.account_id == account.id, Meter.opening_cycle_start == cycle_start
        )
    )
    cycle_end = dt.date(cycle_start.year + 1, cycle_start.month, cycle_start.day)
    bought = session.scalar(
        select(func.coalesce(func.sum(Order.volume), 0)).where(
            Order.account_id == account.id,
            Order.state.in_(COUNTED_ORDER_STATES),
            Order.paid_at >= local_midnight_utc(cycle_start),
            Order.paid_at < local_midnight_utc(cycle_end),
        )
    )
    return int(opening or 0) + int(bought or 0)


def meter_room(session: Session, meter: Meter) -> int:
    """What the meter can still take: capacity less its last reported gas and credits on the way."""
    inbound = session.scalar(
        select(func.coalesce(func.sum(Credit.volume), 0)).where(
            Credit.meter_id == meter.id, Credit.state.in_(INBOUND_CREDIT_STATES)
        )
    )
    return meter.capacity - (meter.last_remaining or 0) - int(inbound or 0)


def _applies(policy: DiscountPolicy, account: Account) -> bool:
    try:
        eligibility = DiscountEligibility(policy.eligibility)
    except ValueError:
        raise QuoteError(
            f"discount policy {policy.id} has an unknown eligibility {policy.eligibility!r}",
            code="tariff_invalid",
        ) from None
    if eligibility is DiscountEligibility.subsidised:
        return account.subsidised
    if eligibility is DiscountEligibility.large_household:
        return (
            policy.min_household_size is not None
            and account.household_size >= policy.min_household_size
        )
    return True


def schedule_for(tariff: Tariff, account: Account) -> tuple[Schedule, frozenset[DiscountKind]]:
    """The schedule an account pays under a tariff, and the discount kinds it qualifies for.

    Of several policies of one kind, the most generous applies; kinds combine.
    """
    percent_off = Decimal(0)
    free_allowance = extension = 0
    kinds: set[DiscountKind] = set()
    for policy in tariff.discounts:
        try:
            kind = DiscountKind(policy.kind)
        except ValueError:
            raise QuoteError(
                f"tariff {tariff.code} has a discount of unknown kind {policy.kind!r}",
                code="tariff_invalid",
            ) from None
        if not _applies(policy, account):
            continue
        if kind is DiscountKind.percentage and policy.percent_off:
            percent_off = max(percent_off, policy.percent_off)
        elif kind is DiscountKind.free_allowance and policy.volume:
            free_allowance = max(free_allowance, policy.volume)
        elif kind is DiscountKind.tier_extension and policy.volume:
            extension = max(extension, policy.volume)
        else:
            continue
        kinds.add(kind)
    tiers = tuple(
        Tier(None if t.upper_bound is None else t.upper_bound + extension, t.price)
        for t in tariff.tiers
    )
    positions = [t.position for t in tariff.tiers]
    try:
        if positions != list(range(1, len(positions) + 1)):
            raise ValueError(f"tier positions are {positions}")
        schedule = Schedule(tiers, _ONE - percent_off / 100, free_allowance)
    except ValueError as exc:
        raise QuoteError(
            f"tariff {tariff.code} is malformed: {exc}", code="tariff_invalid"
        ) from exc
    return schedule, frozenset(kinds)


def quote(
    session: Session,
    *,
    meter: Meter,
    volume: int | None = None,
    amount: int | None = None,
    at: dt.datetime,
) -> Quote:
    """Quote a purchase for ``meter`` at moment ``at``: by volume (0.01 m³) or by amount (fen).

    Raises :class:`QuoteError` with a stable code when the purchase is refused.
    """
    if meter.status != MeterStatus.active.value:
        raise QuoteError(
            f"meter {meter.meter_no} is {meter.status}: it cannot buy gas", code="meter_inactive"
        )
    account = meter.account
    today = local_date(at)
    tariff = tariff_in_force(
        session, branch_id=account.branch_id, category_id=account.category_id, on=today
    )
    if tariff is None:
        raise QuoteError(
            f"no tariff applies to account {account.account_no} on {today.isoformat()}",
            code="no_tariff",
        )
    schedule, kinds = schedule_for(tariff, account)
    start = cycle_start_of(today, tariff.cycle_start_month)
    used_before = cycle_volume(session, account, start)
    limits = Limits(tariff.min_purchase, tariff.max_purchase, meter_room(session, meter))
    parts = price_request(schedule, used_before, limits, volume=volume, amount=amount)
    applied = []
    # Only discounts that shaped this purchase go on it: an allowance used up earlier does not.
    if DiscountKind.tier_extension in kinds:
        applied.append(DiscountKind.tier_extension.value)
    if DiscountKind.free_allowance in kinds and any(p.free for p in parts):
        applied.append(DiscountKind.free_allowance.value)
    if DiscountKind.percentage in kinds and any(not p.free for p in parts):
        applied.append(DiscountKind.percentage.value)
    return Quote(
        account_no=account.account_no,
        meter_no=meter.meter_no,
        tariff_code=tariff.code,
        volume=sum(p.volume for p in parts),
        amount=sum(p.amount for p in parts),
        parts=parts,
        cycle_start=start,
        cycle_volume_before=used_before,
        discounts=tuple(applied),
        quoted_at=at,
    )
