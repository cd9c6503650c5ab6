"""Quotes: the pure arithmetic (properties, with hypothesis) and quotes on the database."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session

from models import demo
from models.accounts import Account, Meter
from models.errors import DomainError, NotFound, QuoteError
from models.orders import Credit
from models.quotes import (
    Limits,
    Quote,
    QuotePart,
    Schedule,
    Tier,
    cycle_volume,
    find_meter,
    meter_room,
    part_cost,
    price_purchase,
    price_request,
    price_text,
    purchase_cost,
    quote,
    volume_for_amount,
)
from models.tariffs import DiscountPolicy, Tariff, TariffTier
from tests.factories import gen_account, gen_branch, gen_order, gen_tariff

M3 = 100
#: 12:00 in Shanghai on 15 June 2026, inside the demo tariff's first cycle
AT = dt.datetime(2026, 6, 15, 4, 0, tzinfo=dt.UTC)
BEIJING = Schedule(
    (Tier(35000, Decimal("2.61")), Tier(50000, Decimal("2.83")), Tier(None, Decimal("4.23")))
)


def parts_of(q: Quote) -> list[tuple[int, int, str, int, bool]]:
    return [(p.tier, p.volume, price_text(p.price), p.amount, p.free) for p in q.parts]


# --- the rounding rule ----------------------------------------------------------------


def test_part_cost_is_volume_times_price_in_fen_rounded_half_up() -> None:
    assert part_cost(5000, Decimal("2.61")) == 13050
    assert part_cost(1, Decimal("2.61")) == 3  # 2.61 fen
    assert part_cost(1, Decimal("2.5")) == 3  # a half goes up
    assert part_cost(1, Decimal("2.4999")) == 2
    assert part_cost(3, Decimal("0.5")) == 2  # 1.5 fen
    assert part_cost(100, Decimal("2.61"), Decimal("0.95")) == 248  # 247.95
    assert part_cost(0, Decimal("2.61")) == 0


def test_price_text_drops_storage_zeros_keeps_two_decimals() -> None:
    assert price_text(Decimal("2.6100")) == "2.61"
    assert price_text(Decimal("3.5")) == "3.50"
    assert price_text(Decimal("2.6150")) == "2.615"
    assert price_text(Decimal("100")) == "100.00"
    assert price_text(Decimal("0.0000")) == "0.00"


def test_schedule_refuses_malformed_tiers() -> None:
    with pytest.raises(ValueError, match="open-ended"):
        Schedule((Tier(100, Decimal(1)),))
    with pytest.raises(ValueError, match="increasing"):
        Schedule((Tier(200, Decimal(1)), Tier(100, Decimal(2)), Tier(None, Decimal(3))))
    with pytest.raises(ValueError, match="increasing"):
        Schedule((Tier(None, Decimal(1)), Tier(None, Decimal(2))))
    with pytest.raises(ValueError, match="negative"):
        Schedule((Tier(None, Decimal(-1)),))
    with pytest.raises(ValueError, match="factor"):
        Schedule((Tier(None, Decimal(1)),), factor=Decimal(0))


def test_crossing_a_tier_boundary_splits_the_purchase() -> None:
    parts = price_purchase(BEIJING, 30000, 10000)
    assert parts == (
        QuotePart(1, 5000, Decimal("2.61"), 13050),
        QuotePart(2, 5000, Decimal("2.83"), 14150),
    )
    # Crossing two boundaries at once gives three parts.
    assert [(p.tier, p.volume) for p in price_purchase(BEIJING, 34000, 20000)] == [
        (1, 1000),
        (2, 15000),
        (3, 4000),
    ]


def test_free_allowance_parts_cost_nothing_but_count_toward_tiers() -> None:
    schedule = Schedule(BEIJING.tiers, free_allowance=36000)
    parts = price_purchase(schedule, 34000, 3000)
    assert parts == (
        QuotePart(1, 1000, Decimal("2.61"), 0, True),
        QuotePart(2, 1000, Decimal("2.83"), 0, True),
        QuotePart(2, 1000, Decimal("2.83"), 2830, False),
    )


# --- properties -----------------------------------------------------------------------

prices = st.decimals(min_value=0, max_value=20, places=4)
percents = st.one_of(
    st.just(Decimal(0)),
    st.decimals(min_value=Decimal("0.01"), max_value=Decimal("99.99"), places=2),
)


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    count = draw(st.integers(1, 4))
    bounds = sorted(draw(st.sets(st.integers(1, 80000), min_size=count - 1, max_size=count - 1)))
    tier_prices = draw(st.lists(prices, min_size=count, max_size=count))
    percent = draw(percents)
    free = draw(st.one_of(st.just(0), st.integers(1, 60000)))
    tiers = tuple(Tier(b, p) for b, p in zip([*bounds, None], tier_prices, strict=True))
    return Schedule(tiers, Decimal(1) - percent / 100, free)


usages = st.integers(0, 100000)
volumes = st.integers(0, 100000)


@given(schedules(), usages, volumes)
def test_parts_add_up_and_follow_the_rounding_rule(
    schedule: Schedule, used: int, volume: int
) -> None:
    parts = price_purchase(schedule, used, volume)
    assert sum(p.volume for p in parts) == volume
    assert sum(p.amount for p in parts) == purchase_cost(schedule, used, volume)
    for part in parts:
        assert part.volume > 0
        assert part.price == schedule.tiers[part.tier - 1].price
        expected = 0 if part.free else part_cost(part.volume, part.price, schedule.factor)
        assert part.amount == expected


@settings(max_examples=60)
@given(schedules(), st.integers(0, 3000), st.integers(0, 1500))
def test_parts_match_a_unit_by_unit_classification(
    schedule: Schedule, used: int, volume: int
) -> None:
    """Each 0.01 m³ lies in the tier (and the free side) a naive walk puts it in."""
    runs: list[list[int]] = []  # [tier, free, volume]
    for unit in range(used, used + volume):
        tier = next(
            i + 1
            for i, t in enumerate(schedule.tiers)
            if t.upper_bound is None or unit < t.upper_bound
        )
        free = int(unit < schedule.free_allowance)
        if runs and runs[-1][:2] == [tier, free]:
            runs[-1][2] += 1
        else:
            runs.append([tier, free, 1])
    parts = price_purchase(schedule, used, volume)
    assert [[p.tier, int(p.free), p.volume] for p in parts] == runs


@given(schedules(), usages, volumes, st.integers(1, 20000))
def test_a_larger_purchase_never_costs_less(
    schedule: Schedule, used: int, volume: int, more: int
) -> None:
    assert purchase_cost(schedule, used, volume + more) >= purchase_cost(schedule, used, volume)


@given(schedules(), usages, volumes, volumes)
def test_splitting_a_purchase_keeps_its_tiers(
    schedule: Schedule, used: int, first: int, second: int
) -> None:
    """Buying a+b at once puts the same volume in each tier as buying a then b."""

    def by_tier(parts: tuple[QuotePart, ...]) -> dict[tuple[int, bool], int]:
        totals: dict[tuple[int, bool], int] = {}
        for p in parts:
            totals[p.tier, p.free] = totals.get((p.tier, p.free), 0) + p.volume
        return totals

    whole = price_purchase(schedule, used, first + second)
    split = price_purchase(schedule, used, first) + price_purchase(schedule, used + first, second)
    assert by_tier(whole) == by_tier(split)
    # Rounding is per part: the two ways differ by at most half a fen per part.
    assert abs(sum(p.amount for p in whole) - sum(p.amount for p in split)) <= len(split)


@given(schedules(), usages, st.integers(0, 400000), st.integers(0, 60000))
def test_by_amount_buys_the_most_the_amount_affords(
    schedule: Schedule, used: int, amount: int, upper: int
) -> None:
    volume = volume_for_amount(schedule, used, amount, upper)
    assert 0 <= volume <= upper
    assert purchase_cost(schedule, used, volume) <= amount
    if volume < upper:
        assert purchase_cost(schedule, used, volume + 1) > amount


@given(schedules(), usages, st.integers(1, 400000))
def test_price_request_by_amount_never_charges_more_than_the_amount(
    schedule: Schedule, used: int, amount: int
) -> None:
    limits = Limits(min_purchase=100, max_purchase=30000, room=99999)
    try:
        parts = price_request(schedule, used, limits, amount=amount)
    except QuoteError as error:
        assert error.code in {"amount_too_small", "amount_too_large"}
        if error.code == "amount_too_small":
            assert purchase_cost(schedule, used, 100) > amount
        else:
            assert error.detail["largest_volume"] == 30000
            assert error.detail["largest_amount"] == purchase_cost(schedule, used, 30000) < amount
        return
    volume = sum(p.volume for p in parts)
    charged = sum(p.amount for p in parts)
    assert 100 <= volume <= 30000
    assert charged == purchase_cost(schedule, used, volume) <= amount
    if volume < 30000:
        assert purchase_cost(schedule, used, volume + 1) > amount


@given(schedules(), usages, volumes)
def test_price_request_by_volume_charges_exactly_its_cost(
    schedule: Schedule, used: int, volume: int
) -> None:
    limits = Limits(min_purchase=100, max_purchase=30000, room=20000)
    try:
        parts = price_request(schedule, used, limits, volume=volume)
    except QuoteError as error:
        expected = (
            "below_minimum"
            if volume < 100
            else "above_maximum"
            if volume > 30000
            else "over_capacity"
        )
        assert error.code == expected
        assert volume < 100 or volume > 20000
        return
    assert parts == price_purchase(schedule, used, volume)


def test_price_request_wants_exactly_one_of_volume_and_amount() -> None:
    limits = Limits(100, 30000, 99999)
    with pytest.raises(QuoteError) as both:
        price_request(BEIJING, 0, limits, volume=100, amount=100)
    assert both.value.code == "volume_or_amount"
    with pytest.raises(QuoteError) as neither:
        price_request(BEIJING, 0, limits)
    assert neither.value.code == "volume_or_amount"


def test_no_room_for_the_minimum_refuses_any_amount() -> None:
    with pytest.raises(QuoteError) as refused:
        price_request(BEIJING, 0, Limits(100, 30000, 99), amount=100000)
    assert refused.value.code == "over_capacity"
    assert "0.99 m³" in refused.value.message


# --- quotes on the demo data ----------------------------------------------------------


@pytest.fixture
def demo_db(db: Session) -> Session:
    demo.load(db, now=AT)
    return db


def meter_of(db: Session, account_no: str, index: int = 1) -> Meter:
    return find_meter(db, account_no, f"M{account_no}{index}")


def test_demo_household_crossing_into_tier_two(demo_db: Session) -> None:
    q = quote(demo_db, meter=meter_of(demo_db, "10000001"), volume=100 * M3, at=AT)
    assert parts_of(q) == [(1, 5000, "2.61", 13050, False), (2, 5000, "2.83", 14150, False)]
    assert (q.volume, q.amount) == (10000, 27200)
    assert q.cycle_volume_before == 30000
    assert q.cycle_start == dt.date(2026, 1, 1)
    assert q.tariff_code == "DEMO-RES-2026"
    assert q.discounts == ()


def test_two_meters_of_one_household_share_the_tiers(demo_db: Session) -> None:
    q = quote(demo_db, meter=meter_of(demo_db, "10000002", 2), volume=20 * M3, at=AT)
    assert q.cycle_volume_before == 34000  # 200 m³ + 140 m³
    assert parts_of(q) == [(1, 1000, "2.61", 2610, False), (2, 1000, "2.83", 2830, False)]
    assert q.amount == 5440


@pytest.mark.parametrize(
    ("account_no", "tier_one", "discounts"),
    [("10000003", 45000, ("tier_extension",)), ("10000005", 35000, ())],
)
def test_large_household_stays_in_tier_one_up_to_450(
    demo_db: Session, account_no: str, tier_one: int, discounts: tuple[str, ...]
) -> None:
    meter = meter_of(demo_db, account_no)
    tariff = demo_db.scalars(select(Tariff).where(Tariff.code == "DEMO-RES-2026")).one()
    gen_order(demo_db, meter, tariff, state="paid", volume=30000, amount=78300, paid_at=AT)
    q = quote(demo_db, meter=meter, volume=200 * M3, at=AT)
    assert q.cycle_volume_before == 30000
    assert q.parts[0].tier == 1
    assert q.parts[0].volume == tier_one - 30000
    assert q.parts[1].tier == 2
    assert q.discounts == discounts
    assert q.amount == part_cost(tier_one - 30000, Decimal("2.61")) + part_cost(
        50000 - tier_one, Decimal("2.83")
    )


def test_large_household_second_boundary_moves_too(demo_db: Session) -> None:
    meter = meter_of(demo_db, "10000003")
    tariff = demo_db.scalars(select(Tariff).where(Tariff.code == "DEMO-RES-2026")).one()
    for _ in range(2):
        gen_order(demo_db, meter, tariff, state="paid", volume=29000, amount=1, paid_at=AT)
    q = quote(demo_db, meter=meter, volume=100 * M3, at=AT)  # 580 → 680 m³
    assert [(p.tier, p.volume) for p in q.parts] == [(2, 2000), (3, 8000)]


def test_subsidised_household_gets_its_first_50_m3_free(demo_db: Session) -> None:
    meter = meter_of(demo_db, "10000004")
    q = quote(demo_db, meter=meter, volume=100 * M3, at=AT)
    assert parts_of(q) == [(1, 5000, "2.61", 0, True), (1, 5000, "2.61", 13050, False)]
    assert q.amount == 13050
    assert q.discounts == ("free_allowance",)

    tariff = demo_db.scalars(select(Tariff).where(Tariff.code == "DEMO-RES-2026")).one()
    gen_order(demo_db, meter, tariff, state="paid", volume=6000, amount=2610, paid_at=AT)
    later = quote(demo_db, meter=meter, volume=100 * M3, at=AT)
    assert later.amount == 26100  # the allowance is used up
    assert later.discounts == ()


def test_non_residential_flat_price(demo_db: Session) -> None:
    q = quote(demo_db, meter=meter_of(demo_db, "10000010"), volume=100 * M3, at=AT)
    assert parts_of(q) == [(1, 10000, "3.35", 33500, False)]
    assert q.tariff_code == "DEMO-BIZ-2026"


@pytest.mark.parametrize(
    ("account_no", "amount", "volume", "charged"),
    [
        ("10000005", 10000, 3831, 9999),  # 38.31 m³ cost 99.9891 yuan; 38.32 m³ 100.0152
        ("10000001", 27200, 10000, 27200),  # exactly the tier-crossing example
        ("10000001", 27202, 10000, 27200),  # another 0.01 m³ in tier 2 costs 3 fen
        ("10000001", 27203, 10001, 27203),
        ("10000004", 13050, 10000, 13050),  # 50 m³ free, then 50 m³ at 2.61
        ("10000004", 1, 5000, 0),  # a fen buys the whole free allowance, charged nothing
        ("10000010", 33500, 10000, 33500),
    ],
)
def test_by_amount_examples(
    demo_db: Session, account_no: str, amount: int, volume: int, charged: int
) -> None:
    q = quote(demo_db, meter=meter_of(demo_db, account_no), amount=amount, at=AT)
    assert (q.volume, q.amount) == (volume, charged)
    assert q.amount == sum(p.amount for p in q.parts)


def refusal(db: Session, meter: Meter, **ask: int) -> QuoteError:
    with pytest.raises(QuoteError) as refused:
        quote(db, meter=meter, at=AT, **ask)
    return refused.value


def test_limits_refuse_with_stable_codes(demo_db: Session) -> None:
    meter = meter_of(demo_db, "10000005")
    assert refusal(demo_db, meter, volume=99).code == "below_minimum"
    assert refusal(demo_db, meter, volume=30001).code == "above_maximum"
    assert quote(demo_db, meter=meter, volume=30000, at=AT).amount == 78300
    small = refusal(demo_db, meter, amount=260)
    assert small.code == "amount_too_small"
    assert "1.00 m³" in small.message and "2.61 yuan" in small.message
    assert quote(demo_db, meter=meter, amount=261, at=AT).volume == 100
    large = refusal(demo_db, meter, amount=78301)
    assert large.code == "amount_too_large"
    assert "300.00 m³" in large.message and "783.00 yuan" in large.message
    assert large.detail == {"largest_volume": 30000, "largest_amount": 78300}
    assert quote(demo_db, meter=meter, amount=78300, at=AT).volume == 30000
    assert refusal(demo_db, meter, volume=100, amount=100).code == "volume_or_amount"


def test_meter_room_counts_its_gas_and_credits_on_the_way(demo_db: Session) -> None:
    meter = meter_of(demo_db, "10000005")
    meter.capacity = 30000
    meter.last_remaining = 5000
    for state in ("awaiting_load", "loaded", "applied", "refunded"):
        demo_db.add(Credit(meter_id=meter.id, volume=5000, value=13050, state=state))
    demo_db.flush()
    assert meter_room(demo_db, meter) == 15000  # applied gas is in last_remaining already
    assert quote(demo_db, meter=meter, volume=15000, at=AT).volume == 15000
    over = refusal(demo_db, meter, volume=15001)
    assert over.code == "over_capacity"
    assert "150.00 m³" in over.message
    capped = refusal(demo_db, meter, amount=1000000)
    assert capped.code == "amount_too_large"
    assert capped.detail["largest_volume"] == 15000
    assert "what the meter can take" in capped.message


def test_inactive_meter_cannot_buy(demo_db: Session) -> None:
    meter = meter_of(demo_db, "10000005")
    meter.status = "suspended"
    assert refusal(demo_db, meter, volume=1000).code == "meter_inactive"


def test_no_tariff_before_the_first_effective_date(demo_db: Session) -> None:
    meter = meter_of(demo_db, "10000005")
    with pytest.raises(QuoteError) as refused:
        # 23:00 on 31 December 2025 in Shanghai: the demo tariffs start the next day.
        quote(demo_db, meter=meter, volume=1000, at=dt.datetime(2025, 12, 31, 15, tzinfo=dt.UTC))
    assert refused.value.code == "no_tariff"
    at_midnight = dt.datetime(2025, 12, 31, 16, tzinfo=dt.UTC)
    assert quote(demo_db, meter=meter, volume=1000, at=at_midnight).amount == 2610


def test_a_price_change_takes_effect_at_its_local_date(demo_db: Session) -> None:
    old = demo_db.scalars(select(Tariff).where(Tariff.code == "DEMO-RES-2026")).one()
    demo_db.add(
        Tariff(
            code="DEMO-RES-2026H2",
            name="居民阶梯气价（调价）",
            branch_id=old.branch_id,
            category_id=old.category_id,
            effective_from=dt.date(2026, 7, 1),
            min_purchase=100,
            max_purchase=30000,
            tiers=[
                TariffTier(position=1, upper_bound=35000, price=Decimal("2.71")),
                TariffTier(position=2, upper_bound=None, price=Decimal("2.93")),
            ],
        )
    )
    demo_db.flush()
    meter = meter_of(demo_db, "10000005")
    before = quote(
        demo_db, meter=meter, volume=100 * M3, at=dt.datetime(2026, 6, 30, 15, 59, tzinfo=dt.UTC)
    )
    after = quote(
        demo_db, meter=meter, volume=100 * M3, at=dt.datetime(2026, 6, 30, 16, 0, tzinfo=dt.UTC)
    )
    assert (before.tariff_code, before.amount) == ("DEMO-RES-2026", 26100)
    assert (after.tariff_code, after.amount) == ("DEMO-RES-2026H2", 27100)
    # The new tariff carries no discounts: the large household loses its extension.
    large = quote(
        demo_db,
        meter=meter_of(demo_db, "10000003"),
        volume=100,
        at=dt.datetime(2026, 7, 2, tzinfo=dt.UTC),
    )
    assert large.discounts == ()


def test_quote_as_dict_is_json_ready(demo_db: Session) -> None:
    q = quote(demo_db, meter=meter_of(demo_db, "10000004"), volume=100 * M3, at=AT)
    assert q.as_dict() == {
        "account_no": "10000004",
        "meter_no": "M100000041",
        "tariff_code": "DEMO-RES-2026",
        "volume": 10000,
        "amount": 13050,
        "parts": [
            {"tier": 1, "volume": 5000, "price": "2.61", "amount": 0, "free": True},
            {"tier": 1, "volume": 5000, "price": "2.61", "amount": 13050, "free": False},
        ],
        "cycle_start": "2026-01-01",
        "cycle_volume_before": 0,
        "discounts": ["free_allowance"],
        "quoted_at": "2026-06-15T04:00:00+00:00",
    }


# --- finding the meter ----------------------------------------------------------------


def test_find_meter(demo_db: Session) -> None:
    assert find_meter(demo_db, "10000001", None).meter_no == "M100000011"
    assert find_meter(demo_db, "10000002", "M100000022").meter_no == "M100000022"
    with pytest.raises(DomainError) as several:
        find_meter(demo_db, "10000002", None)
    assert several.value.code == "meter_required"
    assert "M100000021, M100000022" in several.value.message
    with pytest.raises(NotFound) as no_account:
        find_meter(demo_db, "99999999", None)
    assert no_account.value.code == "account_not_found"
    with pytest.raises(NotFound) as foreign:
        find_meter(demo_db, "10000001", "M100000021")  # another household's meter
    assert foreign.value.code == "meter_not_found"


# --- the cycle --------------------------------------------------------------------------


def test_cycle_volume_counts_paid_orders_of_the_cycle_by_local_date(db: Session) -> None:
    branch = gen_branch(db)
    tariff = gen_tariff(db, branch)
    account = gen_account(db, branch=branch, meters=2)
    other = gen_account(db, branch=branch)
    first, second = account.meters
    first.opening_cycle_volume, first.opening_cycle_start = 1, dt.date(2026, 1, 1)
    second.opening_cycle_volume, second.opening_cycle_start = 2, dt.date(2025, 1, 1)
    in_cycle = dt.datetime(2025, 12, 31, 16, 0, tzinfo=dt.UTC)  # 00:00 on 1 Jan, Shanghai
    before_cycle = dt.datetime(2025, 12, 31, 15, 59, tzinfo=dt.UTC)
    next_cycle = dt.datetime(2026, 12, 31, 16, 0, tzinfo=dt.UTC)
    counted = [("paid", 10, first), ("refunding", 20, second)]
    ignored = [("refunded", 40, first), ("created", 80, first), ("closed", 160, second)]
    for state, volume, meter in counted + ignored:
        gen_order(db, meter, tariff, state=state, volume=volume, paid_at=in_cycle)
    gen_order(db, first, tariff, state="paid", volume=320, paid_at=before_cycle)
    gen_order(db, first, tariff, state="paid", volume=640, paid_at=next_cycle)
    gen_order(db, other.meters[0], tariff, state="paid", volume=1280, paid_at=in_cycle)
    assert cycle_volume(db, account, dt.date(2026, 1, 1)) == 1 + 10 + 20
    assert cycle_volume(db, account, dt.date(2025, 1, 1)) == 2 + 320
    assert cycle_volume(db, account, dt.date(2027, 1, 1)) == 640


def test_cycle_starts_on_the_tariffs_month(db: Session) -> None:
    branch = gen_branch(db)
    tariff = gen_tariff(db, branch, cycle_start_month=4)
    account = gen_account(db, branch=branch)
    meter = account.meters[0]
    march = dt.datetime(2026, 3, 10, tzinfo=dt.UTC)
    gen_order(db, meter, tariff, state="paid", volume=40000, paid_at=march)
    end_of_march = quote(
        db, meter=meter, volume=100, at=dt.datetime(2026, 3, 31, 15, 59, tzinfo=dt.UTC)
    )
    assert (end_of_march.cycle_start, end_of_march.cycle_volume_before) == (
        dt.date(2025, 4, 1),
        40000,
    )
    assert end_of_march.parts[0].tier == 2
    april = quote(db, meter=meter, volume=100, at=dt.datetime(2026, 3, 31, 16, tzinfo=dt.UTC))
    assert (april.cycle_start, april.cycle_volume_before) == (dt.date(2026, 4, 1), 0)
    assert april.parts[0].tier == 1


# --- discounts on a tariff --------------------------------------------------------------


def discounted_quote(
    db: Session, policies: list[DiscountPolicy], **account: object
) -> tuple[Quote, Account]:
    branch = gen_branch(db)
    gen_tariff(db, branch, discounts=policies)
    holder = gen_account(db, branch=branch, **account)
    return quote(db, meter=holder.meters[0], volume=10000, at=AT), holder


def test_percentage_discount_on_every_part(db: Session) -> None:
    q, _ = discounted_quote(db, [DiscountPolicy(kind="percentage", percent_off=Decimal("5"))])
    assert q.amount == 24795  # 26100 × 0.95
    assert q.parts[0].price == Decimal("2.61")  # the listed price, before discount
    assert q.discounts == ("percentage",)


def test_the_most_generous_policy_of_a_kind_applies(db: Session) -> None:
    q, _ = discounted_quote(
        db,
        [
            DiscountPolicy(kind="percentage", percent_off=Decimal("12.5")),
            DiscountPolicy(kind="percentage", percent_off=Decimal("5")),
            DiscountPolicy(kind="percentage", percent_off=Decimal("50"), eligibility="subsidised"),
        ],
    )
    assert q.amount == 22838  # 26100 × 0.875 = 22837.5, half up


def test_discounts_follow_eligibility(db: Session) -> None:
    policies = [
        DiscountPolicy(
            kind="tier_extension",
            eligibility="large_household",
            volume=5000,
            min_household_size=5,
        )
    ]
    small, _ = discounted_quote(db, policies, household_size=4)
    assert small.discounts == ()
    policies = [DiscountPolicy(kind="free_allowance", eligibility="subsidised", volume=1000)]
    unsubsidised, _ = discounted_quote(db, policies, subsidised=False)
    assert unsubsidised.amount == 26100
    policies = [DiscountPolicy(kind="free_allowance", eligibility="subsidised", volume=1000)]
    subsidised, _ = discounted_quote(db, policies, subsidised=True)
    assert subsidised.amount == 26100 - 2610


def test_a_tariff_with_an_unknown_discount_refuses_rather_than_misprice(db: Session) -> None:
    with pytest.raises(QuoteError) as refused:
        discounted_quote(db, [DiscountPolicy(kind="loyalty", volume=100)])
    assert refused.value.code == "tariff_invalid"
