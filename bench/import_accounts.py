"""Benchmark ``ranqi import accounts``: N accounts (one meter and one card each), three times.

Makes a fresh database through the migrations, a branch and the two categories, then
imports a generated CSV (all new), a changed copy (every account, meter and card
updated) and the changed copy again (all unchanged), each committed like the CLI does.
Prints rows, seconds and rows/s, and checks that re-importing made no duplicates.

    .venv/bin/python bench/import_accounts.py                  # 100 000 accounts, SQLite
    .venv/bin/python bench/import_accounts.py --accounts 10000 --repeat 3 --format xlsx
    .venv/bin/python bench/import_accounts.py --database-url postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
from pathlib import Path

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from models import Account, Branch, Card, Company, CustomerCategory, Meter, migrate
from models.imports import import_accounts
from portal.cli_imports import read_table
from portal.db import make_engine

COLUMNS = [
    "account_no",
    "holder_name",
    "phone",
    "address",
    "branch_code",
    "category_code",
    "household_size",
    "subsidised",
    "meter_no",
    "meter_kind",
    "capacity_m3",
    "cycle_volume_m3",
    "cycle_start",
    "card_no",
    "tag_uid",
    "tag_type",
    "purchase_count",
    "replacement_count",
]


def write_csv(path: Path, accounts: int, *, changed: bool) -> None:
    """N accounts; ``changed`` alters a column of every account, meter and card."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for i in range(accounts):
            writer.writerow(
                [
                    f"{50000000 + i}",
                    "张三" if i % 2 else "李四",
                    f"1{(3900000000 + i + (1 if changed else 0)) % 10**10:010d}",
                    f"示范市和平区幸福路{i // 100}号{i % 100}室",
                    "BENCH",
                    "residential" if i % 10 else "non_residential",
                    3,
                    1 if i % 50 == 0 else 0,
                    f"M{50000000 + i}",
                    "ic_card",
                    "999.99",
                    f"{(i % 400) + (1 if changed else 0)}.25",
                    "2026-01-01",
                    f"C{50000000 + i}",
                    f"04{i:012X}",
                    "ntag215",
                    (i % 30) + (1 if changed else 0),
                    0,
                ]
            )


def to_xlsx(path: Path) -> Path:
    """The same rows as a workbook (text cells, as a careful export would write them)."""
    from openpyxl import Workbook

    workbook = Workbook(write_only=True)
    sheet = workbook.create_sheet("accounts")
    with path.open(encoding="utf-8", newline="") as handle:
        for record in csv.reader(handle):
            sheet.append(record)
    target = path.with_suffix(".xlsx")
    workbook.save(target)
    return target


def fresh_database(url: str) -> Engine:
    engine = make_engine(url)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    migrate.upgrade(engine)
    with Session(engine) as session:
        company = Company(code="BENCH", name="基准燃气")
        session.add_all(
            [
                Branch(company=company, code="BENCH", name="基准分公司"),
                CustomerCategory(code="residential", name_zh="居民", name_en="Residential"),
                CustomerCategory(
                    code="non_residential", name_zh="非居民", name_en="Non-residential"
                ),
            ]
        )
        session.commit()
    return engine


def timed_import(engine: Engine, path: Path) -> tuple[float, str]:
    """Seconds to read the file, validate, write and commit; and the report's summary."""
    started = time.perf_counter()
    with Session(engine) as session:
        report = import_accounts(session, read_table(path))
        if not report.ok:
            raise SystemExit("\n".join(str(p) for p in report.problems[:20]))
        session.commit()
    return time.perf_counter() - started, report.summary()


def count_rows(engine: Engine) -> dict[str, int]:
    with Session(engine) as session:
        return {
            "accounts": session.scalar(select(func.count()).select_from(Account)) or 0,
            "distinct account_no": session.scalar(
                select(func.count(func.distinct(Account.account_no)))
            )
            or 0,
            "meters": session.scalar(select(func.count()).select_from(Meter)) or 0,
            "cards": session.scalar(select(func.count()).select_from(Card)) or 0,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--database-url", help="default: a fresh SQLite file per run")
    parser.add_argument("--repeat", type=int, default=1, help="runs; the median is printed")
    parser.add_argument("--format", choices=["csv", "xlsx"], default="csv")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        first_file, changed_file = work / "accounts.csv", work / "accounts-changed.csv"
        write_csv(first_file, args.accounts, changed=False)
        write_csv(changed_file, args.accounts, changed=True)
        if args.format == "xlsx":
            first_file, changed_file = to_xlsx(first_file), to_xlsx(changed_file)
        results: list[tuple[float, float, float]] = []
        for run in range(1, args.repeat + 1):
            url = args.database_url or f"sqlite:///{work}/bench-{run}.sqlite3"
            engine = fresh_database(url)
            print(f"run {run}: {engine.dialect.name}, {args.accounts} accounts, {args.format}")
            first, summary = timed_import(engine, first_file)
            print(f"  first import             {first:7.2f} s  {summary}")
            again, summary = timed_import(engine, changed_file)
            print(f"  re-import, all updated   {again:7.2f} s  {summary}")
            same, summary = timed_import(engine, changed_file)
            print(f"  re-import, all unchanged {same:7.2f} s  {summary}")
            counts = count_rows(engine)
            print(f"  rows after re-imports: {counts}")
            if set(counts.values()) != {args.accounts}:
                raise SystemExit("re-import made duplicates or lost rows")
            results.append((first, again, same))
            engine.dispose()

    rows = args.accounts
    first, again, same = (statistics.median(r[i] for r in results) for i in range(3))
    print(f"rows (accounts = meters = cards): {rows}")
    print(f"median of {len(results)} run(s):")
    print(f"  first import:              {first:.2f} s  {rows / first:,.0f} rows/s")
    print(f"  re-import (all updated):   {again:.2f} s  {rows / again:,.0f} rows/s")
    print(f"  re-import (all unchanged): {same:.2f} s  {rows / same:,.0f} rows/s")
    print("  no duplicates after re-import: ok")


if __name__ == "__main__":
    main()
