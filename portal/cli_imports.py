"""``ranqi import tariffs|accounts FILE``: read a CSV or XLSX file, import it, commit once.

The rules live in :mod:`models.imports`; this module only turns files into rows of
strings and reports. docs/imports.md describes the columns.
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import NoReturn

import click
from flask.cli import with_appcontext
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import imports
from models.imports import ImportReport, Problem, Table
from portal import db


class FileRefused(ValueError):
    """The file cannot be read as a table at all (wrong type, not UTF-8, damaged)."""


def read_table(path: Path) -> Table:
    """The first sheet of an .xlsx file, or a .csv file (UTF-8, with or without BOM)."""
    suffix = path.suffix.lower()
    if suffix == ".xlsx":
        return read_xlsx(path)
    if suffix in {".csv", ".txt"}:
        return read_csv(path)
    raise FileRefused(f"{path.name}: expected a .csv or .xlsx file")


def read_csv(path: Path) -> Table:
    """A CSV file as a :class:`Table`; a byte-order mark is dropped if present."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            return _table(list(csv.reader(handle)))
    except UnicodeDecodeError:
        # Old systems often export GBK; guessing the encoding would garble names silently.
        raise FileRefused(
            f"{path.name}: not UTF-8 text; save it as 'CSV UTF-8' (Excel) and try again"
        ) from None
    except csv.Error as exc:
        raise FileRefused(f"{path.name}: not a readable CSV file ({exc})") from None


def read_xlsx(path: Path) -> Table:
    """The first sheet of an XLSX workbook as a :class:`Table` (cached values, not formulas)."""
    from openpyxl import load_workbook

    try:
        with warnings.catch_warnings():
            # Workbooks saved by other tools make openpyxl warn about styles it ignores.
            warnings.simplefilter("ignore", UserWarning)
            workbook = load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a damaged or foreign file
        raise FileRefused(f"{path.name}: not a readable XLSX workbook ({exc})") from None
    try:
        sheet = workbook.worksheets[0]
        cells = [[_cell_text(value) for value in row] for row in sheet.iter_rows(values_only=True)]
    finally:
        workbook.close()
    return _table(cells)


def _cell_text(value: object) -> str:
    """A spreadsheet cell as the text a person sees in it."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, dt.datetime):
        if value.time() == dt.time():
            return value.date().isoformat()
        return value.isoformat(sep=" ")
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, float):
        # 15 significant digits is what Excel shows (and all a double holds reliably),
        # so 12.340000000000002 from a formula reads as 12.34.
        return str(int(value)) if value.is_integer() else f"{value:.15g}"
    return str(value)


def _table(records: Sequence[Sequence[str]]) -> Table:
    """Header and data rows; blank rows are skipped, but row numbers stay the file's."""
    if not records:
        return Table(columns=[], rows=[], problems=[Problem(None, "the file is empty")])
    columns = [name.strip().lower() for name in records[0]]
    rows: list[tuple[int, dict[str, str]]] = []
    problems: list[Problem] = []
    for number, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue
        values: dict[str, str] = {}
        for index, cell in enumerate(record):
            name = columns[index] if index < len(columns) else ""
            if name:
                values[name] = cell
            elif cell.strip():
                problems.append(
                    Problem(number, f"a value in column {index + 1}, which has no header")
                )
        rows.append((number, values))
    return Table(columns=[name for name in columns if name], rows=rows, problems=problems)


@click.group("import")
def import_group() -> None:
    """Import tariffs and accounts from a utility's previous system (CSV or XLSX)."""


_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_DRY_RUN = click.option(
    "--dry-run", is_flag=True, help="Check the file and count what would change; write nothing."
)


@import_group.command("tariffs")
@click.argument("file", type=_FILE)
@_DRY_RUN
@with_appcontext
def import_tariffs_command(file: Path, dry_run: bool) -> None:
    """Create or update tariffs and their tiers from FILE (one row per tier)."""
    _run(imports.import_tariffs, file, dry_run=dry_run)


@import_group.command("accounts")
@click.argument("file", type=_FILE)
@_DRY_RUN
@with_appcontext
def import_accounts_command(file: Path, dry_run: bool) -> None:
    """Create or update accounts, their meters and cards from FILE (one row per meter)."""
    _run(imports.import_accounts, file, dry_run=dry_run)


def _run(operation: Callable[[Session, Table], ImportReport], file: Path, *, dry_run: bool) -> None:
    """Read, import, and commit once; on any problem roll back, list them, exit 1."""
    try:
        table = read_table(file)
    except FileRefused as exc:
        _fail([Problem(None, str(exc))], file)
    session = db.session()
    try:
        report = operation(session, table)
    except IntegrityError as exc:
        # Validation passed, so someone changed the same records meanwhile.
        session.rollback()
        message = f"the database refused the import, was it changed meanwhile? ({exc.orig})"
        _fail([Problem(None, message)], file)
    except Exception:
        session.rollback()
        raise
    if not report.ok:
        session.rollback()
        _fail(report.problems, file)
    if dry_run:
        session.rollback()
        click.echo(f"dry run, nothing written: {file.name} is valid; {report.summary()}")
        return
    session.commit()
    click.echo(f"imported {file.name}: {report.summary()}")


def _fail(problems: Iterable[Problem], file: Path) -> NoReturn:
    count = 0
    for problem in problems:
        click.echo(str(problem), err=True)
        count += 1
    click.echo(f"import FAILED: {count} problem(s) in {file.name}; nothing was imported", err=True)
    sys.exit(1)
