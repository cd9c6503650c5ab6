from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Account, Branch, Card, Meter, Tariff, TariffTier, demo
from models.imports import (
    ImportReport,
    Table,
    import_accounts,
    import_tariffs,
    parse_price,
    parse_volume,
)
from models.states import CardState
from portal.cli_imports import read_table
from tests.factories import gen_account, gen_branch, gen_category, gen_tariff

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TODAY = dt.date(2026, 6, 15)


def table(rows: list[dict[str, str]], columns: list[str] | None = None) -> Table:
    """Rows as a reader gives them: the header is row 1, data from row 2."""
    return Table(columns=columns or list(rows[0]), rows=list(enumerate(rows, start=2)))


def account_row(branch: Branch, **overrides: str) -> dict[str, str]:
    row = {
        "account_no": "70000001",
        "holder_name": "陈静",
        "phone": "13900002001",
        "address": "示范市新华路3号101",
        "branch_code": branch.code,
        "category_code": "residential",
        "household_size": "3",
        "subsidised": "0",
        "meter_no": "M700000011",
        "meter_kind": "ic_card",
        "capacity_m3": "999.99",
        "cycle_volume_m3": "126.34",
        "cycle_start": "2026-01-01",
        "card_no": "C700000011",
        "tag_uid": "04a1b2c3d4e501",
        "tag_type": "ntag215",
        "purchase_count": "14",
        "replacement_count": "1",
    }
    row.update(overrides)
    return row


def count(db: Session, model: type[Any]) -> int:
    return db.scalar(select(func.count()).select_from(model)) or 0


def messages(report: ImportReport) -> list[str]:
    return [str(problem) for problem in report.problems]


@pytest.fixture
def branch(db: Session) -> Branch:
    gen_category(db, "residential")
    gen_category(db, "non_residential")
    return gen_branch(db)


# --- cells ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "units"),
    [("300", 30000), ("12.34", 1234), ("0.1", 10), ("0", 0), ("999.99", 99999)],
)
def test_volume_converts_exactly_to_hundredths(text: str, units: int) -> None:
    assert parse_volume(text) == units


@pytest.mark.parametrize("text", ["12.345", "-1", "1e3", "12,5", "1.", ".5", "NaN", "１２"])
def test_volume_refuses_more_decimals_and_other_spellings(text: str) -> None:
    with pytest.raises(ValueError, match="at most 2 decimals"):
        parse_volume(text)


def test_price_is_exact_with_up_to_four_decimals() -> None:
    assert parse_price("2.8550") == Decimal("2.855")
    assert isinstance(parse_price("4"), Decimal)
    with pytest.raises(ValueError, match="at most 4 decimals"):
        parse_price("2.61005")


# --- accounts --------------------------------------------------------------------------


def test_accounts_meters_and_cards_are_created_with_opening_balances(
    db: Session, branch: Branch
) -> None:
    rows = [
        account_row(branch),
        account_row(
            branch,
            account_no="70000002",
            phone="13900002002",
            meter_no="M700000021",
            card_no="C700000021",
            tag_uid="04A1B2C3D4E502",
            cycle_volume_m3="300",
        ),
        # the same account's second meter: a mechanical one, without a card
        account_row(
            branch,
            account_no="70000002",
            phone="13900002002",
            meter_no="M700000022",
            meter_kind="mechanical",
            capacity_m3="",
            cycle_volume_m3="0.05",
            card_no="",
            tag_uid="",
            tag_type="",
            purchase_count="",
            replacement_count="",
        ),
    ]
    report = import_accounts(db, table(rows), today=TODAY)

    assert report.ok, messages(report)
    assert report.summary() == (
        "accounts: 2 created, 0 updated, 0 unchanged; "
        "meters: 3 created, 0 updated, 0 unchanged; "
        "cards: 2 created, 0 updated, 0 unchanged"
    )
    meter = db.scalars(select(Meter).where(Meter.meter_no == "M700000011")).one()
    assert meter.account.account_no == "70000001"
    assert meter.account.branch_id == branch.id
    assert meter.account.category.code == "residential"
    assert meter.opening_cycle_volume == 12634
    assert meter.opening_cycle_start == dt.date(2026, 1, 1)
    assert meter.capacity == 99999
    card = meter.cards[0]
    assert (card.card_no, card.purchase_count, card.replacement_count) == ("C700000011", 14, 1)
    assert card.tag_uid == "04A1B2C3D4E501"  # upper-cased so that look-ups by UID match
    assert card.state == CardState.active.value
    assert card.pending_volume == 0

    two = db.scalars(select(Account).where(Account.account_no == "70000002")).one()
    assert [m.meter_no for m in two.meters] == ["M700000021", "M700000022"]
    assert two.meters[0].opening_cycle_volume == 30000
    mechanical = two.meters[1]
    assert (mechanical.kind, mechanical.opening_cycle_volume) == ("mechanical", 5)
    assert mechanical.cards == []


def test_reimport_updates_and_never_duplicates(db: Session, branch: Branch) -> None:
    rows = [
        account_row(branch),
        account_row(
            branch,
            account_no="70000002",
            meter_no="M700000021",
            card_no="C700000021",
            tag_uid="04A1B2C3D4E502",
        ),
    ]
    assert import_accounts(db, table(rows), today=TODAY).ok
    before = {model: count(db, model) for model in (Account, Meter, Card)}
    account = db.scalars(select(Account).where(Account.account_no == "70000001")).one()
    assert account.phone == "13900002001"

    rows[0] = account_row(branch, phone="13911112222", cycle_volume_m3="200", purchase_count="15")
    report = import_accounts(db, table(rows), today=TODAY)

    assert report.ok, messages(report)
    assert report.summary() == (
        "accounts: 0 created, 1 updated, 1 unchanged; "
        "meters: 0 created, 1 updated, 1 unchanged; "
        "cards: 0 created, 1 updated, 1 unchanged"
    )
    assert {model: count(db, model) for model in (Account, Meter, Card)} == before
    # the object loaded before the import sees the new values
    assert account.phone == "13911112222"
    assert account.meters[0].opening_cycle_volume == 20000
    assert account.meters[0].cards[0].purchase_count == 15


def test_reimport_leaves_the_card_state_alone(db: Session, branch: Branch) -> None:
    assert import_accounts(db, table([account_row(branch)]), today=TODAY).ok
    card = db.scalars(select(Card).where(Card.card_no == "C700000011")).one()
    card.transition_to(CardState.lost)
    db.flush()

    report = import_accounts(db, table([account_row(branch, purchase_count="20")]), today=TODAY)

    assert report.ok, messages(report)
    assert (card.state, card.purchase_count) == (CardState.lost.value, 20)


def test_a_bad_file_reports_every_problem_by_row_and_imports_nothing(
    db: Session, branch: Branch
) -> None:
    before = {model: count(db, model) for model in (Account, Meter, Card)}
    rows = [
        account_row(branch),  # row 2: fine, but must not be imported either
        account_row(
            branch, account_no="70000002", meter_no="M2", card_no="C2", tag_uid="", phone="1390000"
        ),
        account_row(
            branch,
            account_no="70000003",
            meter_no="M3",
            card_no="C3",
            tag_uid="",
            branch_code="NORTH",
            cycle_volume_m3="12.345",
        ),
        account_row(
            branch,
            account_no="70000004",
            card_no="C4",
            tag_uid="04A1B2C3D4E501",
            household_size="0",
            subsidised="maybe",
            cycle_start="",
            purchase_count="-1",
        ),
        account_row(
            branch,
            account_no="70000005",
            meter_no="M5",
            card_no="",
            tag_uid="",
            cycle_start="2026-03-15",
        ),
        account_row(branch, meter_no="M6", card_no="C6", tag_uid="", holder_name="陈晶"),
        account_row(
            branch, account_no="", meter_no="M7", card_no="C7", tag_uid="", category_code="farm"
        ),
    ]
    report = import_accounts(db, table(rows), today=TODAY)

    assert messages(report) == [
        "row 3: phone: must be 11 digits (a mobile number starting with 1)",
        "row 4: cycle_volume_m3: '12.345' is not a volume in m³ with at most 2 decimals "
        "(e.g. 12.34)",
        "row 4: branch_code: no branch NORTH in Ranqi",
        "row 5: household_size: must be 1 or more",
        "row 5: subsidised: 'maybe' is not yes/no (use 1 or 0)",
        "row 5: cycle_start: is required when cycle_volume_m3 is above 0",
        "row 5: purchase_count: '-1' is not a whole number (0 or more)",
        "row 5: meter_no M700000011 appears twice (first on row 2)",
        "row 5: tag_uid 04A1B2C3D4E501 appears twice (first on row 2)",
        "row 6: cycle_start: must be the 1st of a month (the tier cycle's first day)",
        "row 6: card_no: is required for an ic_card meter",
        "row 7: account 70000001: holder_name differ(s) from row 2 "
        "(repeat the account's columns unchanged on each meter)",
        "row 8: account_no: is required",
        "row 8: category_code: no customer category farm in Ranqi",
    ]
    assert not report.tallies
    assert {model: count(db, model) for model in (Account, Meter, Card)} == before


def test_missing_unknown_and_repeated_columns_are_refused(db: Session, branch: Branch) -> None:
    row = account_row(branch)
    del row["phone"]
    row["phnoe"] = "13900002001"
    columns = [*row, "address"]

    report = import_accounts(db, table([row], columns=columns), today=TODAY)

    assert messages(report) == [
        "row 1: column address appears twice",
        "row 1: missing column(s): phone",
        "row 1: unknown column(s): phnoe",
    ]


def test_an_empty_file_is_refused(db: Session) -> None:
    report = import_accounts(db, Table(columns=["account_no"], rows=[]), today=TODAY)
    assert "the file has no data rows" in messages(report)


def test_a_meter_does_not_move_to_another_account(db: Session, branch: Branch) -> None:
    other = gen_account(db, branch=branch)
    meter_no = other.meters[0].meter_no

    report = import_accounts(
        db, table([account_row(branch, meter_no=meter_no, card_no="C1", tag_uid="")]), today=TODAY
    )

    assert messages(report) == [
        f"row 2: meter_no {meter_no} belongs to account {other.account_no} in Ranqi; "
        "an import does not move meters between accounts",
        f"row 2: card_no C1: meter {meter_no} already has active card "
        f"{other.meters[0].cards[0].card_no} in Ranqi; replace cards through 补卡, not an import",
    ]
    assert db.scalar(select(Account).where(Account.account_no == "70000001")) is None


def test_cards_are_not_moved_set_back_or_given_a_taken_tag(db: Session, branch: Branch) -> None:
    other = gen_account(db, branch=branch)
    taken_card = other.meters[0].cards[0]
    assert import_accounts(db, table([account_row(branch)]), today=TODAY).ok

    rows = [
        account_row(branch, purchase_count="13", replacement_count="0", tag_uid=taken_card.tag_uid),
        account_row(
            branch, account_no="70000002", meter_no="M2", card_no=taken_card.card_no, tag_uid=""
        ),
    ]
    report = import_accounts(db, table(rows), today=TODAY)

    assert messages(report) == [
        "row 2: purchase_count: 13 is below the card's 14 in Ranqi (the card has been used since)",
        "row 2: replacement_count: 0 is below the card's 1 in Ranqi",
        f"row 2: tag_uid {taken_card.tag_uid} belongs to card {taken_card.card_no} in Ranqi",
        f"row 3: card_no {taken_card.card_no} belongs to meter {other.meters[0].meter_no} "
        "in Ranqi; an import does not move cards between meters",
    ]


def test_card_columns_only_for_ic_card_meters(db: Session, branch: Branch) -> None:
    rows = [
        account_row(branch, meter_kind="iot"),
        account_row(
            branch,
            account_no="70000002",
            meter_no="M2",
            meter_kind="mechanical",
            card_no="",
            tag_uid="",
            tag_type="",
            purchase_count="3",
            replacement_count="",
        ),
        account_row(
            branch,
            account_no="70000003",
            meter_no="M3",
            meter_kind="diaphragm",
            card_no="C3",
            tag_uid="",
        ),
    ]
    assert messages(import_accounts(db, table(rows), today=TODAY)) == [
        "row 2: card_no: only ic_card meters have cards, this one is iot",
        "row 3: purchase_count: given without a card_no",
        "row 4: meter_kind: 'diaphragm' is not one of ic_card, iot, mechanical",
    ]


# --- tariffs ---------------------------------------------------------------------------


def tier_row(branch: Branch, tier: int, upper: str, price: str, **overrides: str) -> dict[str, str]:
    row = {
        "tariff_code": "IMP-RES",
        "name": "居民阶梯气价",
        "branch_code": branch.code,
        "category_code": "residential",
        "effective_from": "2027-01-01",
        "cycle_start_month": "1",
        "min_purchase_m3": "1",
        "max_purchase_m3": "300",
        "tier": str(tier),
        "upper_bound_m3": upper,
        "price_yuan": price,
    }
    row.update(overrides)
    return row


def test_tariffs_are_created_then_updated_in_place(db: Session, branch: Branch) -> None:
    rows = [
        tier_row(branch, 1, "350", "2.61"),
        tier_row(branch, 2, "500", "2.83"),
        tier_row(branch, 3, "", "4.23"),
        tier_row(branch, 1, "", "3.35", tariff_code="IMP-BIZ", category_code="non_residential"),
    ]
    report = import_tariffs(db, table(rows))
    assert report.ok, messages(report)
    assert report.summary() == (
        "tariffs: 2 created, 0 updated, 0 unchanged; tiers: 4 created, 0 updated, 0 unchanged"
    )
    tariff = db.scalars(select(Tariff).where(Tariff.code == "IMP-RES")).one()
    assert tariff.branch_id == branch.id
    assert (tariff.effective_from, tariff.min_purchase, tariff.max_purchase) == (
        dt.date(2027, 1, 1),
        100,
        30000,
    )
    assert [(t.position, t.upper_bound, t.price) for t in tariff.tiers] == [
        (1, 35000, Decimal("2.61")),
        (2, 50000, Decimal("2.83")),
        (3, None, Decimal("4.23")),
    ]

    # Again, with two tiers instead of three and a new price: same tariff, no duplicates.
    rows = [
        tier_row(branch, 1, "400", "2.6350", name="居民气价"),
        tier_row(branch, 2, "", "3.10", name="居民气价"),
        rows[3],
    ]
    report = import_tariffs(db, table(rows))
    assert report.ok, messages(report)
    assert report.summary() == (
        "tariffs: 0 created, 1 updated, 1 unchanged; "
        "tiers: 0 created, 2 updated, 1 unchanged, 1 removed"
    )
    assert db.scalar(select(func.count()).where(Tariff.code.in_(["IMP-RES", "IMP-BIZ"]))) == 2
    tariff = db.scalars(select(Tariff).where(Tariff.code == "IMP-RES")).one()
    assert tariff.name == "居民气价"
    assert [(t.position, t.upper_bound, t.price) for t in tariff.tiers] == [
        (1, 40000, Decimal("2.635")),
        (2, None, Decimal("3.10")),
    ]


def test_bad_tariffs_report_every_problem_and_import_nothing(db: Session, branch: Branch) -> None:
    existing = gen_tariff(db, branch, effective_from=dt.date(2027, 1, 1))
    tiers_before = count(db, TariffTier)
    rows = [
        tier_row(branch, 1, "350", "2.61", tariff_code="A"),  # row 2: starts as `existing`
        tier_row(branch, 2, "300", "2.83", tariff_code="A"),  # row 3: not increasing
        tier_row(branch, 3, "600", "4.23", tariff_code="A"),  # row 4: last tier bounded
        tier_row(branch, 1, "350", "2.61", tariff_code="B", effective_from="2028-01-01"),
        tier_row(branch, 3, "", "4.23", tariff_code="B", effective_from="2028-01-01"),  # gap
        tier_row(branch, 1, "", "2.611111", tariff_code="C", branch_code="NORTH"),  # row 7
        tier_row(
            branch,
            1,
            "",
            "2.61",
            tariff_code="D",
            effective_from="2029-02-30",
            max_purchase_m3="0.5",
        ),
    ]
    report = import_tariffs(db, table(rows))

    assert messages(report) == [
        f"row 2: tariff A: tariff {existing.code} already prices residential at {branch.code} "
        "from 2027-01-01",
        "row 3: tariff A: tier 2's upper_bound_m3 must be above tier 1's (tiers not increasing)",
        "row 4: tariff A: the last tier (3) must leave upper_bound_m3 blank",
        "row 5: tariff B: tiers must be numbered 1, 2, 3... without gaps (found 1, 3)",
        "row 7: price_yuan: '2.611111' is not a price in yuan with at most 4 decimals (e.g. 2.61)",
        "row 7: branch_code: no branch NORTH in Ranqi",
        "row 8: effective_from: '2029-02-30' is not a date YYYY-MM-DD",
    ]
    assert db.scalar(select(func.count()).where(Tariff.code.in_(["A", "B", "C", "D"]))) == 0
    assert count(db, TariffTier) == tiers_before


def test_max_purchase_below_min_is_refused(db: Session, branch: Branch) -> None:
    rows = [tier_row(branch, 1, "", "2.61", min_purchase_m3="10", max_purchase_m3="5")]
    assert messages(import_tariffs(db, table(rows))) == [
        "row 2: max_purchase_m3: is below min_purchase_m3"
    ]


# --- the examples shipped in examples/ ---------------------------------------------------


def test_examples_import_cleanly_into_the_demo_database(db: Session) -> None:
    demo.load(db)

    tariffs = import_tariffs(db, read_table(EXAMPLES / "tariffs.csv"))
    assert tariffs.ok, messages(tariffs)
    assert tariffs.tallies["tariffs"].created == 2
    assert tariffs.tallies["tariffs"].unchanged == 1  # DEMO-RES-2026 as the demo has it

    accounts = import_accounts(db, read_table(EXAMPLES / "accounts.csv"))
    assert accounts.ok, messages(accounts)
    assert accounts.summary() == (
        "accounts: 5 created, 0 updated, 0 unchanged; "
        "meters: 6 created, 0 updated, 0 unchanged; "
        "cards: 5 created, 0 updated, 0 unchanged"
    )
    # the workbook holds the same accounts: nothing new, nothing changed
    workbook = import_accounts(db, read_table(EXAMPLES / "accounts.xlsx"))
    assert workbook.ok, messages(workbook)
    assert workbook.summary() == (
        "accounts: 0 created, 0 updated, 5 unchanged; "
        "meters: 0 created, 0 updated, 6 unchanged; "
        "cards: 0 created, 0 updated, 5 unchanged"
    )
    meter = db.scalars(select(Meter).where(Meter.meter_no == "M200000022")).one()
    assert (meter.opening_cycle_volume, meter.capacity) == (3575, 50000)


def test_the_bad_example_fails_as_docs_imports_md_shows(db: Session) -> None:
    demo.load(db)
    report = import_accounts(db, read_table(EXAMPLES / "accounts_bad.csv"))
    documented = (EXAMPLES.parent / "docs" / "imports.md").read_text(encoding="utf-8")
    assert len(report.problems) == 8
    for problem in report.problems:
        assert str(problem) in documented
