from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from openpyxl import Workbook
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Account, Branch, Card, Meter, Tariff, imports
from portal.cli_imports import read_table
from tests.factories import gen_branch, gen_category

HEADER = (
    "account_no,holder_name,phone,address,branch_code,category_code,household_size,subsidised,"
    "meter_no,meter_kind,capacity_m3,cycle_volume_m3,cycle_start,card_no,tag_uid,tag_type,"
    "purchase_count,replacement_count"
)


@pytest.fixture
def branch(db: Session) -> Branch:
    gen_category(db, "residential")
    return gen_branch(db)


def accounts_csv(branch: Branch, phone: str = "13900002001") -> str:
    return (
        f"{HEADER}\n"
        f"80000001,陈静,{phone},新华路3号101,{branch.code},residential,3,0,"
        "M800000011,ic_card,999.99,126.5,2026-01-01,C800000011,04A1B2C3D4E501,ntag215,14,0\n"
        f"80000002,刘洋,13900002002,新华路3号102,{branch.code},residential,5,1,"
        "M800000021,ic_card,500,0,,C800000021,04A1B2C3D4E502,ntag216,0,1\n"
    )


def run(app: Flask, *args: str) -> Result:
    result: Result = app.test_cli_runner().invoke(args=["import", *args])
    return result


def count(db: Session, model: type[Any]) -> int:
    return db.scalar(select(func.count()).select_from(model)) or 0


def test_a_good_csv_imports_and_exits_0(
    app: Flask, db: Session, branch: Branch, tmp_path: Path
) -> None:
    path = tmp_path / "accounts.csv"
    path.write_text(accounts_csv(branch), encoding="utf-8")

    result = run(app, "accounts", str(path))

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "imported accounts.csv: accounts: 2 created, 0 updated, 0 unchanged; "
        "meters: 2 created, 0 updated, 0 unchanged; cards: 2 created, 0 updated, 0 unchanged\n"
    )
    meter = db.scalars(select(Meter).where(Meter.meter_no == "M800000011")).one()
    assert (meter.opening_cycle_volume, meter.opening_cycle_start) == (12650, dt.date(2026, 1, 1))
    assert meter.cards[0].purchase_count == 14


def test_reimport_through_the_cli_updates_without_duplicates(
    app: Flask, db: Session, branch: Branch, tmp_path: Path
) -> None:
    path = tmp_path / "accounts.csv"
    path.write_text(accounts_csv(branch), encoding="utf-8")
    assert run(app, "accounts", str(path)).exit_code == 0
    before = [count(db, model) for model in (Account, Meter, Card)]

    path.write_text(accounts_csv(branch, phone="13911112222"), encoding="utf-8")
    result = run(app, "accounts", str(path))

    assert result.exit_code == 0, result.output
    assert "accounts: 0 created, 1 updated, 1 unchanged" in result.stdout
    assert [count(db, model) for model in (Account, Meter, Card)] == before
    phone = db.scalar(select(Account.phone).where(Account.account_no == "80000001"))
    assert phone == "13911112222"


def test_a_csv_with_a_byte_order_mark_imports(
    app: Flask, db: Session, branch: Branch, tmp_path: Path
) -> None:
    path = tmp_path / "accounts.csv"
    path.write_text(accounts_csv(branch), encoding="utf-8-sig")  # what Excel writes
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")

    result = run(app, "accounts", str(path))

    assert result.exit_code == 0, result.output
    assert db.scalar(select(Account).where(Account.account_no == "80000001")) is not None


def test_a_bad_file_exits_1_lists_each_problem_and_imports_nothing(
    app: Flask, db: Session, branch: Branch, tmp_path: Path
) -> None:
    good, bad = accounts_csv(branch).splitlines()[1:]
    path = tmp_path / "bad.csv"
    path.write_text(
        "\n".join(
            [
                HEADER,
                good,
                bad.replace("13900002002", "139"),
                good.replace("80000001,", "80000003,", 1).replace("新华路3号101", "新华路9号"),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    before = [count(db, model) for model in (Account, Meter, Card)]

    result = run(app, "accounts", str(path))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "row 3: phone: must be 11 digits (a mobile number starting with 1)",
        "row 4: meter_no M800000011 appears twice (first on row 2)",
        "row 4: card_no C800000011 appears twice (first on row 2)",
        "row 4: tag_uid 04A1B2C3D4E501 appears twice (first on row 2)",
        "import FAILED: 4 problem(s) in bad.csv; nothing was imported",
    ]
    assert [count(db, model) for model in (Account, Meter, Card)] == before
    assert db.scalar(select(Account).where(Account.account_no == "80000001")) is None


def test_an_xlsx_workbook_imports_its_first_sheet(
    app: Flask, db: Session, branch: Branch, tmp_path: Path
) -> None:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(HEADER.split(","))
    # Typed cells as a spreadsheet holds them: numbers, a date, a blank.
    sheet.append(
        [
            "80000001",
            "陈静",
            13900002001,
            "新华路3号101",
            branch.code,
            "residential",
            3,
            True,
            "M800000011",
            "ic_card",
            999.99,
            12.34,
            dt.date(2026, 1, 1),  # read back as a datetime at midnight
            "C800000011",
            "04a1b2c3d4e501",
            None,
            7,
            0,
        ]
    )
    workbook.create_sheet("notes").append(["ignored: only the first sheet is read"])
    path = tmp_path / "accounts.xlsx"
    workbook.save(path)

    result = run(app, "accounts", str(path))

    assert result.exit_code == 0, result.output
    account = db.scalars(select(Account).where(Account.account_no == "80000001")).one()
    assert (account.phone, account.subsidised) == ("13900002001", True)
    meter = account.meters[0]
    assert (meter.capacity, meter.opening_cycle_volume) == (99999, 1234)
    assert meter.opening_cycle_start == dt.date(2026, 1, 1)
    card = meter.cards[0]
    assert (card.tag_uid, card.tag_type, card.purchase_count) == ("04A1B2C3D4E501", "ntag215", 7)


def test_xlsx_values_outside_the_header_are_refused(tmp_path: Path) -> None:
    workbook = Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["account_no", "holder_name"])
    sheet.append([])
    sheet.append(["1", "陈静", "stray"])
    path = tmp_path / "stray.xlsx"
    workbook.save(path)

    table = read_table(path)

    assert table.columns == ["account_no", "holder_name"]
    assert [number for number, _ in table.rows] == [3]  # the blank row 2 is skipped, not renumbered
    assert [str(p) for p in table.problems] == ["row 3: a value in column 3, which has no header"]


def test_a_file_that_is_not_utf8_is_refused(app: Flask, branch: Branch, tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes(accounts_csv(branch).encode("gbk"))

    result = run(app, "accounts", str(path))

    assert result.exit_code == 1
    assert "gbk.csv: not UTF-8 text" in result.stderr


def test_dry_run_counts_but_writes_nothing(
    app: Flask, db: Session, branch: Branch, tmp_path: Path
) -> None:
    path = tmp_path / "accounts.csv"
    path.write_text(accounts_csv(branch), encoding="utf-8")

    result = run(app, "accounts", "--dry-run", str(path))

    assert result.exit_code == 0, result.output
    assert "dry run, nothing written" in result.stdout
    assert "accounts: 2 created" in result.stdout
    assert db.scalar(select(Account).where(Account.account_no == "80000001")) is None


def test_tariffs_import_through_the_cli(
    app: Flask, db: Session, branch: Branch, tmp_path: Path
) -> None:
    head = (
        "tariff_code,name,branch_code,category_code,effective_from,cycle_start_month,"
        "min_purchase_m3,max_purchase_m3,tier,upper_bound_m3,price_yuan\n"
    )
    common = f"CLI-RES,居民阶梯气价,{branch.code},residential,2027-01-01,1,1,300"
    path = tmp_path / "tariffs.csv"
    path.write_text(f"{head}{common},1,350,2.61\n{common},2,,2.83\n", encoding="utf-8")

    result = run(app, "tariffs", str(path))

    assert result.exit_code == 0, result.output
    tariff = db.scalars(select(Tariff).where(Tariff.code == "CLI-RES")).one()
    assert [t.upper_bound for t in tariff.tiers] == [35000, None]

    path.write_text(f"{head}{common},1,350,2.61\n{common},1,,2.83\n", encoding="utf-8")
    result = run(app, "tariffs", str(path))
    assert result.exit_code == 1
    assert "row 3: tariff CLI-RES: tier 1 appears twice (row 2)" in result.stderr


def test_an_unknown_file_type_is_refused(app: Flask, tmp_path: Path) -> None:
    path = tmp_path / "accounts.xls"
    path.write_bytes(b"\xd0\xcf\x11\xe0")

    result = run(app, "accounts", str(path))

    assert result.exit_code == 1
    assert "accounts.xls: expected a .csv or .xlsx file" in result.stderr


def test_a_clash_at_write_time_rolls_back_and_exits_1(
    app: Flask, db: Session, branch: Branch, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "accounts.csv"
    path.write_text(accounts_csv(branch), encoding="utf-8")
    assert run(app, "accounts", str(path)).exit_code == 0
    before = [count(db, model) for model in (Account, Meter, Card)]
    # As if another import created the same accounts between the checks and the writes.
    monkeypatch.setattr(imports, "_load_existing", lambda session, lines: imports._Existing())

    result = run(app, "accounts", str(path))

    assert result.exit_code == 1
    assert "the database refused the import, was it changed meanwhile?" in result.stderr
    assert [count(db, model) for model in (Account, Meter, Card)] == before
