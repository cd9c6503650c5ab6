"""What the verified page reads: cycle standing and tier, meter state, purchase history;
the second factor's check."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy.orm import Session

from models.accounts import MeterReport
from models.base import utcnow
from models.history import account_details, cycle_standing, meter_state, purchases
from models.lookup import normalise_last_four, second_factor_matches
from models.orders import Credit
from models.tariffs import DiscountPolicy
from tests.factories import gen_account, gen_order, gen_tariff


def _paid(db: Session, order_volume: int, **overrides: object) -> Credit:
    account = overrides.pop("account")
    tariff = overrides.pop("tariff")
    meter = overrides.pop("meter", None) or account.meters[0]  # type: ignore[attr-defined]
    order = gen_order(
        db,
        meter,
        tariff,
        volume=order_volume,
        state="paid",
        paid_at=overrides.pop("paid_at", utcnow()),
        **overrides,
    )
    credit = Credit(order=order, meter_id=order.meter_id, volume=order.volume, value=order.amount)
    db.add(credit)
    db.flush()
    return credit


def test_standing_counts_the_household_over_all_meters(db: Session) -> None:
    account = gen_account(db, meters=2)
    tariff = gen_tariff(db, account.branch)  # tiers end at 350 and 500 m³
    now = utcnow()
    standing = cycle_standing(db, account, now)
    assert standing is not None
    assert (standing.volume, standing.tier, standing.tiers, standing.price) == (
        0,
        1,
        3,
        Decimal("2.61"),
    )
    assert standing.tier_upper == 35000
    _paid(db, 20000, account=account, tariff=tariff)
    _paid(db, 15000, account=account, tariff=tariff, meter=account.meters[1])
    standing = cycle_standing(db, account, now)
    assert standing is not None
    # exactly at the end of tier 1: the next purchase starts in tier 2
    assert (standing.volume, standing.tier, standing.tier_upper) == (35000, 2, 50000)
    _paid(db, 20000, account=account, tariff=tariff)
    standing = cycle_standing(db, account, now)
    assert standing is not None
    assert (standing.tier, standing.tier_upper, standing.price) == (3, None, Decimal("4.23"))


def test_standing_follows_a_tier_extension(db: Session) -> None:
    account = gen_account(db, household_size=5)
    tariff = gen_tariff(
        db,
        account.branch,
        discounts=[
            DiscountPolicy(
                kind="tier_extension",
                eligibility="large_household",
                volume=10000,
                min_household_size=5,
            )
        ],
    )
    _paid(db, 40000, account=account, tariff=tariff)
    standing = cycle_standing(db, account, utcnow())
    assert standing is not None
    assert (standing.tier, standing.tier_upper) == (1, 45000)


def test_standing_without_a_tariff(db: Session) -> None:
    assert cycle_standing(db, gen_account(db), utcnow()) is None


def test_last_year_does_not_count(db: Session) -> None:
    account = gen_account(db)
    tariff = gen_tariff(db, account.branch)
    _paid(db, 40000, account=account, tariff=tariff, paid_at=utcnow() - dt.timedelta(days=400))
    standing = cycle_standing(db, account, utcnow())
    assert standing is not None and standing.volume == 0


def test_meter_state_last_purchase_and_gas_waiting(db: Session) -> None:
    account = gen_account(db)
    tariff = gen_tariff(db, account.branch)
    meter = account.meters[0]
    state = meter_state(db, meter)
    assert state.last_purchase is None and state.awaiting_load_volume == 0
    earlier = _paid(
        db, 1000, account=account, tariff=tariff, paid_at=utcnow() - dt.timedelta(days=3)
    )
    earlier.state = "applied"
    _paid(db, 2000, account=account, tariff=tariff)
    _paid(db, 3000, account=account, tariff=tariff)
    gen_order(db, meter, tariff, volume=9999)  # not paid: not a purchase, nothing waiting
    meter.last_remaining = 1234
    meter.last_report_at = utcnow()
    db.flush()
    state = meter_state(db, meter)
    assert state.last_purchase is not None and state.last_purchase.volume in {2000, 3000}
    assert state.last_purchase.credit_state == "awaiting_load"
    assert (state.awaiting_load_volume, state.awaiting_load_count) == (5000, 2)
    assert state.last_remaining == 1234 and state.last_report_at is not None


def test_purchases_newest_first_with_unpaid_ones(db: Session) -> None:
    account = gen_account(db)
    other = gen_account(db, branch=account.branch)
    tariff = gen_tariff(db, account.branch)
    now = utcnow()
    old = gen_order(db, account.meters[0], tariff, created_at=now - dt.timedelta(days=2))
    new = gen_order(db, account.meters[0], tariff, created_at=now)
    gen_order(db, other.meters[0], tariff, created_at=now)
    listed = purchases(db, account)
    assert [p.order_no for p in listed] == [new.order_no, old.order_no]
    assert listed[0].meter_no == account.meters[0].meter_no
    assert listed[0].state == "created" and listed[0].credit_state is None


def test_account_details(db: Session) -> None:
    account = gen_account(db, meters=2)
    account.meters[1].status = "removed"
    tariff = gen_tariff(db, account.branch)
    _paid(db, 1000, account=account, tariff=tariff)
    details = account_details(db, account.account_no, at=utcnow())
    assert details is not None
    assert [m.meter_no for m in details.meters] == [account.meters[0].meter_no]
    assert len(details.purchases) == 1
    assert details.standing is not None and details.standing.volume == 1000
    assert account_details(db, "00000000", at=utcnow()) is None


def test_second_factor(db: Session) -> None:
    account = gen_account(db, phone="+86 139-0000-1234")
    assert second_factor_matches(db, account.account_no, "1234")
    assert not second_factor_matches(db, account.account_no, "1235")
    assert not second_factor_matches(db, "00000000", "1234")
    assert normalise_last_four(" １２３４ ") == "1234"
    assert normalise_last_four("123") is None
    assert normalise_last_four("12345") is None
    assert normalise_last_four("12a4") is None


def test_meter_state_carries_the_last_reports_valve_and_alarms(db: Session) -> None:
    meter = gen_account(db).meters[0]
    assert meter_state(db, meter).valve_open is None
    now = utcnow()
    for seq, (valve, alarms, at) in enumerate(
        [(True, "", now - dt.timedelta(days=1)), (False, "leak,low_battery", now)], start=1
    ):
        db.add(
            MeterReport(
                meter_id=meter.id,
                report_seq=seq,
                applied_count=1,
                remaining=0,
                total_used=100,
                total_purchased=100,
                valve_open=valve,
                alarms=alarms,
                reported_at=at,
            )
        )
    db.flush()
    state = meter_state(db, meter)
    assert state.valve_open is False and state.alarms == ("leak", "low_battery")
