"""Importing tariffs and accounts (with meters and cards) from a utility's previous system.

Rows arrive as strings keyed by column name; reading CSV or XLSX files is the edge's job
(:mod:`portal.cli_imports`). Every row is checked first and any problem means nothing is
written. Records are matched by their codes (upsert): importing a file again updates,
never duplicates. docs/imports.md is the reference for the columns and the rules.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from decimal import Decimal
from typing import Any, TypeVar

from sqlalchemy import Column, MetaData, String, insert, select, update
from sqlalchemy import Table as SqlTable
from sqlalchemy.orm import Session, selectinload

from models.accounts import Account, Card, Meter
from models.base import utcnow
from models.clock import local_date
from models.org import Branch, CustomerCategory
from models.states import CardState, MeterKind, TagType
from models.tariffs import Tariff, TariffTier

T = TypeVar("T")

#: 0.01 m³ units per m³
M3 = 100
#: rows per executemany batch (bounds the memory a statement holds at once)
CHUNK = 5000
#: the largest 0.01 m³ value an INTEGER column holds on PostgreSQL
MAX_VOLUME = 2**31 - 1
#: the largest count an INTEGER column holds on PostgreSQL
MAX_COUNT = 2**31 - 1

_VOLUME_RE = re.compile(r"\d+(\.\d{1,2})?", re.ASCII)
_PRICE_RE = re.compile(r"\d{1,6}(\.\d{1,4})?", re.ASCII)
_INT_RE = re.compile(r"\d+", re.ASCII)
_DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
_PHONE_RE = re.compile(r"1\d{10}", re.ASCII)
_TAG_UID_RE = re.compile(r"(?:[0-9A-Fa-f]{2}){4,16}", re.ASCII)
_TRUE = {"1", "true", "yes", "y", "是"}
_FALSE = {"", "0", "false", "no", "n", "否"}


# --- what goes in and what comes out -------------------------------------------------


@dataclass(frozen=True)
class Table:
    """A file's contents: its header and its data rows, each with its row number.

    Row numbers are the spreadsheet's: the header is row 1, so the first data row is 2.
    """

    columns: list[str]
    rows: list[tuple[int, dict[str, str]]]
    #: what the reader already found wrong (a value under no header, ...)
    problems: list[Problem] = field(default_factory=list)


@dataclass(frozen=True)
class Problem:
    """One reason a file is refused; ``row`` is None for the file as a whole."""

    row: int | None
    message: str

    def __str__(self) -> str:
        return self.message if self.row is None else f"row {self.row}: {self.message}"


@dataclass
class Tally:
    """How many records of one kind an import created, changed, left alone or removed."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0

    def __str__(self) -> str:
        text = f"{self.created} created, {self.updated} updated, {self.unchanged} unchanged"
        return text + (f", {self.removed} removed" if self.removed else "")


@dataclass
class ImportReport:
    """The outcome: the problems (then nothing was written) or what was written."""

    problems: list[Problem] = field(default_factory=list)
    tallies: dict[str, Tally] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line: ``accounts: 3 created, 0 updated, 0 unchanged; meters: ...``."""
        return "; ".join(f"{kind}: {tally}" for kind, tally in self.tallies.items())


# --- cell parsers: each returns the value or raises ValueError with the reason -------


def parse_volume(text: str) -> int:
    """m³ with at most two decimals ("300", "12.34") as exact 0.01 m³ units."""
    if not _VOLUME_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a volume in m³ with at most 2 decimals (e.g. 12.34)")
    units = int(Decimal(text) * M3)
    if units > MAX_VOLUME:
        raise ValueError(f"{text} m³ is too large")
    return units


def parse_positive_volume(text: str) -> int:
    """A volume (see :func:`parse_volume`) that must be above zero."""
    units = parse_volume(text)
    if units <= 0:
        raise ValueError("must be more than 0")
    return units


def parse_price(text: str) -> Decimal:
    """Yuan per m³ with at most four decimals, exact."""
    if not _PRICE_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a price in yuan with at most 4 decimals (e.g. 2.61)")
    return Decimal(text)


def parse_count(text: str) -> int:
    """A whole number, zero or more."""
    if not _INT_RE.fullmatch(text) or int(text) > MAX_COUNT:
        raise ValueError(f"{text!r} is not a whole number (0 or more)")
    return int(text)


def parse_positive_count(text: str) -> int:
    value = parse_count(text)
    if value < 1:
        raise ValueError("must be 1 or more")
    return value


def parse_date(text: str) -> dt.date:
    """A calendar date written YYYY-MM-DD."""
    try:
        if not _DATE_RE.fullmatch(text):
            raise ValueError
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a date YYYY-MM-DD") from None


def parse_bool(text: str) -> bool:
    """yes/no in the spellings old systems use (1/0, true/false, yes/no, 是/否)."""
    folded = text.lower()
    if folded in _TRUE:
        return True
    if folded in _FALSE:
        return False
    raise ValueError(f"{text!r} is not yes/no (use 1 or 0)")


def parse_phone(text: str) -> str:
    if not _PHONE_RE.fullmatch(text):
        raise ValueError("must be 11 digits (a mobile number starting with 1)")
    return text


def parse_tag_uid(text: str) -> str:
    """A tag UID in hex (4 to 16 bytes), kept upper-case so that look-ups match."""
    if not _TAG_UID_RE.fullmatch(text):
        raise ValueError(f"{text!r} is not a tag UID (hex, 8 to 32 digits, whole bytes)")
    return text.upper()


def parse_month(text: str) -> int:
    value = parse_count(text)
    if not 1 <= value <= 12:
        raise ValueError("must be a month 1 to 12")
    return value


def choice(options: type[MeterKind] | type[TagType]) -> Callable[[str], str]:
    """A parser that accepts one of an enum's values."""
    allowed = [member.value for member in options]

    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"{text!r} is not one of {', '.join(allowed)}")
        return text

    return parse


def text_of(max_length: int) -> Callable[[str], str]:
    """A parser for free text that fits its column."""

    def parse(text: str) -> str:
        if len(text) > max_length:
            raise ValueError(f"is longer than {max_length} characters")
        return text

    return parse


# Parsers made once: the account import calls them for every row.
_TEXT_32 = text_of(32)
_TEXT_40 = text_of(40)
_TEXT_100 = text_of(100)
_TEXT_200 = text_of(200)
_TEXT_300 = text_of(300)
_METER_KIND = choice(MeterKind)
_TAG_TYPE = choice(TagType)
_IC_CARD = MeterKind.ic_card.value
_NTAG215 = TagType.ntag215.value


class _Cells:
    """One row's cells, read column by column; each problem is noted with the row number."""

    def __init__(self, number: int, values: dict[str, str], problems: list[Problem]) -> None:
        self.number = number
        self.values = values
        self.problems = problems
        self.failed = False

    def problem(self, message: str) -> None:
        self.problems.append(Problem(self.number, message))
        self.failed = True

    def blank(self, column: str) -> bool:
        return not self.values.get(column, "").strip()

    def get(
        self, column: str, parse: Callable[[str], T], *, default: T, required: bool = False
    ) -> T:
        """The parsed cell; ``default`` when blank, and after a noted problem."""
        text = self.values.get(column, "").strip()
        if not text:
            if required:
                self.problem(f"{column}: is required")
            return default
        try:
            return parse(text)
        except ValueError as exc:
            self.problem(f"{column}: {exc}")
            return default


def _check_columns(
    table: Table, required: Sequence[str], optional: Sequence[str], problems: list[Problem]
) -> bool:
    """Refuse a header that lacks a required column, repeats one, or names an unknown one."""
    known = set(required) | set(optional)
    before = len(problems)
    seen: set[str] = set()
    for name in table.columns:
        if name in seen:
            problems.append(Problem(1, f"column {name} appears twice"))
        seen.add(name)
    missing = [name for name in required if name not in seen]
    if missing:
        problems.append(Problem(1, f"missing column(s): {', '.join(missing)}"))
    unknown = [name for name in table.columns if name and name not in known]
    if unknown:
        problems.append(Problem(1, f"unknown column(s): {', '.join(unknown)}"))
    if not table.rows:
        problems.append(Problem(None, "the file has no data rows"))
    return len(problems) == before


def _by_row(problem: Problem) -> int:
    """Sort key: problems with the file as a whole first, then by row (stable within one)."""
    return problem.row or 0


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


def _codes(session: Session, model: type[Branch] | type[CustomerCategory]) -> dict[str, int]:
    return {code: id_ for code, id_ in session.execute(select(model.code, model.id))}


def _check_codes(
    problems: list[Problem],
    row: int,
    codes: tuple[str, str],
    branches: dict[str, int],
    categories: dict[str, int],
) -> None:
    """Note a branch or category the file names but Ranqi lacks (blanks are noted already)."""
    branch_code, category_code = codes
    if branch_code and branch_code not in branches:
        problems.append(Problem(row, f"branch_code: no branch {branch_code} in Ranqi"))
    if category_code and category_code not in categories:
        problems.append(
            Problem(row, f"category_code: no customer category {category_code} in Ranqi")
        )


# --- accounts, meters, cards ---------------------------------------------------------

ACCOUNT_REQUIRED = (
    "account_no",
    "holder_name",
    "phone",
    "address",
    "branch_code",
    "category_code",
    "meter_no",
)
ACCOUNT_OPTIONAL = (
    "household_size",
    "subsidised",
    "meter_kind",
    "capacity_m3",
    "cycle_volume_m3",
    "cycle_start",
    "card_no",
    "tag_uid",
    "tag_type",
    "purchase_count",
    "replacement_count",
)
_CARD_DETAIL = ("tag_uid", "tag_type", "purchase_count", "replacement_count")
#: a meter's capacity when the file gives none (the model's default), 0.01 m³
DEFAULT_CAPACITY = 99999


@dataclass(frozen=True)
class _AccountFields:
    account_no: str
    holder_name: str
    phone: str
    address: str
    branch_code: str
    category_code: str
    household_size: int
    subsidised: bool


@dataclass(frozen=True)
class _MeterFields:
    meter_no: str
    kind: str
    capacity: int
    opening_cycle_volume: int
    opening_cycle_start: dt.date | None


@dataclass(frozen=True)
class _CardFields:
    card_no: str
    tag_uid: str | None
    tag_type: str
    purchase_count: int
    replacement_count: int


@dataclass(frozen=True)
class _AccountLine:
    row: int
    account: _AccountFields
    meter: _MeterFields
    card: _CardFields | None
    #: False if a cell was bad (its field then holds a default, good for nothing but keys)
    valid: bool


def _read_account_line(
    number: int, values: dict[str, str], today: dt.date, problems: list[Problem]
) -> _AccountLine:
    """Parse one row, noting each bad cell."""
    cells = _Cells(number, values, problems)
    account = _AccountFields(
        account_no=cells.get("account_no", _TEXT_32, default="", required=True),
        holder_name=cells.get("holder_name", _TEXT_100, default="", required=True),
        phone=cells.get("phone", parse_phone, default="", required=True),
        address=cells.get("address", _TEXT_300, default="", required=True),
        branch_code=cells.get("branch_code", _TEXT_32, default="", required=True),
        category_code=cells.get("category_code", _TEXT_32, default="", required=True),
        household_size=cells.get("household_size", parse_positive_count, default=1),
        subsidised=cells.get("subsidised", parse_bool, default=False),
    )
    kind = cells.get("meter_kind", _METER_KIND, default=_IC_CARD)
    volume = cells.get("cycle_volume_m3", parse_volume, default=0)
    start = cells.get("cycle_start", parse_date, default=None)
    if start is not None and start.day != 1:
        cells.problem("cycle_start: must be the 1st of a month (the tier cycle's first day)")
    if start is not None and start > today:
        cells.problem(f"cycle_start: {start} is in the future")
    if volume and start is None:
        cells.problem("cycle_start: is required when cycle_volume_m3 is above 0")
    meter = _MeterFields(
        meter_no=cells.get("meter_no", _TEXT_32, default="", required=True),
        kind=kind,
        capacity=cells.get("capacity_m3", parse_positive_volume, default=DEFAULT_CAPACITY),
        opening_cycle_volume=volume,
        opening_cycle_start=start,
    )
    card: _CardFields | None = None
    if not cells.blank("card_no"):
        if kind != _IC_CARD:
            cells.problem(f"card_no: only ic_card meters have cards, this one is {kind}")
        card = _CardFields(
            card_no=cells.get("card_no", _TEXT_32, default=""),
            tag_uid=cells.get("tag_uid", parse_tag_uid, default=None),
            tag_type=cells.get("tag_type", _TAG_TYPE, default=_NTAG215),
            purchase_count=cells.get("purchase_count", parse_count, default=0),
            replacement_count=cells.get("replacement_count", parse_count, default=0),
        )
    elif kind == _IC_CARD:
        cells.problem("card_no: is required for an ic_card meter")
    else:
        given = [column for column in _CARD_DETAIL if not cells.blank(column)]
        if given:
            cells.problem(f"{', '.join(given)}: given without a card_no")
    return _AccountLine(number, account, meter, card, valid=not cells.failed)


def _duplicates(
    lines: Sequence[_AccountLine],
    key: Callable[[_AccountLine], str | None],
    what: str,
    problems: list[Problem],
) -> None:
    """Note every row whose ``key`` an earlier row already used."""
    first: dict[str, int] = {}
    for line in lines:
        value = key(line)
        if not value:
            continue
        if value in first:
            problems.append(
                Problem(line.row, f"{what} {value} appears twice (first on row {first[value]})")
            )
        else:
            first[value] = line.row


def _check_repeated_accounts(lines: Sequence[_AccountLine], problems: list[Problem]) -> None:
    """An account's columns, repeated on each of its meters' rows, must agree."""
    first: dict[str, _AccountLine] = {}
    for line in lines:
        earlier = first.setdefault(line.account.account_no, line)
        if earlier.account != line.account:
            differ = [
                name
                for name, a, b in zip(
                    [f.name for f in dataclass_fields(_AccountFields)],
                    astuple(earlier.account),
                    astuple(line.account),
                    strict=True,
                )
                if a != b
            ]
            problems.append(
                Problem(
                    line.row,
                    f"account {line.account.account_no}: {', '.join(differ)} differ(s) from "
                    f"row {earlier.row} (repeat the account's columns unchanged on each meter)",
                )
            )


def import_accounts(
    session: Session, table: Table, *, today: dt.date | None = None
) -> ImportReport:
    """Validate every row, then create or update accounts, meters and cards in bulk.

    On any problem nothing is written and the report lists every problem by row.
    """
    today = today or local_date(utcnow())
    report = ImportReport(problems=list(table.problems))
    problems = report.problems
    if not _check_columns(table, ACCOUNT_REQUIRED, ACCOUNT_OPTIONAL, problems):
        problems.sort(key=_by_row)
        return report

    # Rows with a bad cell still take part in the checks their good cells allow
    # (duplicate keys, unknown branches), so that one pass reports every problem.
    parsed = [_read_account_line(n, values, today, problems) for n, values in table.rows]
    lines = [line for line in parsed if line.valid]
    _duplicates(parsed, lambda line: line.meter.meter_no, "meter_no", problems)
    _duplicates(parsed, lambda line: line.card.card_no if line.card else None, "card_no", problems)
    _duplicates(parsed, lambda line: line.card.tag_uid if line.card else None, "tag_uid", problems)
    _check_repeated_accounts(lines, problems)

    session.flush()
    branches = _codes(session, Branch)
    categories = _codes(session, CustomerCategory)
    for line in parsed:
        codes = (line.account.branch_code, line.account.category_code)
        _check_codes(problems, line.row, codes, branches, categories)

    existing = _load_existing(session, lines)
    _check_against_database(lines, existing, problems)
    if problems:
        problems.sort(key=_by_row)
        return report
    _write_accounts(session, lines, existing, branches, categories, report)
    return report


@dataclass
class _Existing:
    """What the database holds for the keys a file names (loaded a chunk at a time)."""

    #: account_no -> (id, fields as in _AccountFields but with branch/category ids)
    accounts: dict[str, tuple[int, tuple[Any, ...]]] = field(default_factory=dict)
    #: meter_no -> (id, its account's account_no, fields)
    meters: dict[str, tuple[int, str, tuple[Any, ...]]] = field(default_factory=dict)
    #: card_no -> (id, its meter's meter_no, fields)
    cards: dict[str, tuple[int, str, tuple[Any, ...]]] = field(default_factory=dict)
    #: tag_uid -> card_no holding it
    tags: dict[str, str] = field(default_factory=dict)
    #: meter_no -> card_no of its active card
    active_cards: dict[str, str] = field(default_factory=dict)


@contextmanager
def _key_table(session: Session, keys: Iterable[str]) -> Iterator[SqlTable]:
    """A temporary one-column table of ``keys`` to join with, dropped afterwards.

    Not ``IN (...)`` with thousands of parameters: right after a bulk load (no
    statistics yet) PostgreSQL scanned the whole table comparing every row with every
    parameter, seconds per query. A join uses the unique index or a hash. If anything
    fails the caller rolls back, and the table goes with the transaction.
    """
    connection = session.connection()
    table = SqlTable(
        "ranqi_import_keys",
        MetaData(),  # not Base.metadata: this table is no part of the schema
        Column("key", String(100), primary_key=True),
        prefixes=["TEMPORARY"],
    )
    table.create(connection)
    for chunk in _chunks(sorted(set(keys))):
        connection.execute(insert(table), [{"key": key} for key in chunk])
    yield table
    table.drop(connection)


def _load_existing(session: Session, lines: Sequence[_AccountLine]) -> _Existing:
    """Everything the database holds for the file's keys: one query per kind of record."""
    existing = _Existing()
    with _key_table(session, (line.account.account_no for line in lines)) as keys:
        for row in session.execute(
            select(
                Account.account_no,
                Account.id,
                Account.holder_name,
                Account.phone,
                Account.address,
                Account.branch_id,
                Account.category_id,
                Account.household_size,
                Account.subsidised,
            ).join(keys, Account.account_no == keys.c.key)
        ):
            existing.accounts[row[0]] = (row[1], tuple(row[2:]))
    with _key_table(session, (line.meter.meter_no for line in lines)) as keys:
        for meter_row in session.execute(
            select(
                Meter.meter_no,
                Meter.id,
                Account.account_no,
                Meter.kind,
                Meter.capacity,
                Meter.opening_cycle_volume,
                Meter.opening_cycle_start,
            )
            .join(Account, Meter.account_id == Account.id)
            .join(keys, Meter.meter_no == keys.c.key)
        ):
            existing.meters[meter_row[0]] = (meter_row[1], meter_row[2], tuple(meter_row[3:]))
        for card_no, meter_no in session.execute(
            select(Card.card_no, Meter.meter_no)
            .join(Meter, Card.meter_id == Meter.id)
            .join(keys, Meter.meter_no == keys.c.key)
            .where(Card.state == CardState.active.value)
        ):
            existing.active_cards[meter_no] = card_no
    with _key_table(session, (line.card.card_no for line in lines if line.card)) as keys:
        for card_row in session.execute(
            select(
                Card.card_no,
                Card.id,
                Meter.meter_no,
                Card.tag_uid,
                Card.tag_type,
                Card.purchase_count,
                Card.replacement_count,
            )
            .join(Meter, Card.meter_id == Meter.id)
            .join(keys, Card.card_no == keys.c.key)
        ):
            existing.cards[card_row[0]] = (card_row[1], card_row[2], tuple(card_row[3:]))
    tag_uids = (line.card.tag_uid for line in lines if line.card and line.card.tag_uid)
    with _key_table(session, tag_uids) as keys:
        for tag_uid, card_no in session.execute(
            select(Card.tag_uid, Card.card_no).join(keys, Card.tag_uid == keys.c.key)
        ):
            if tag_uid is not None:
                existing.tags[tag_uid] = card_no
    return existing


def _check_against_database(
    lines: Sequence[_AccountLine], existing: _Existing, problems: list[Problem]
) -> None:
    """Refuse what would move a meter or card, or put a card's counts backwards."""
    for line in lines:
        meter_no = line.meter.meter_no
        known_meter = existing.meters.get(meter_no)
        if known_meter is not None and known_meter[1] != line.account.account_no:
            problems.append(
                Problem(
                    line.row,
                    f"meter_no {meter_no} belongs to account {known_meter[1]} in Ranqi; "
                    "an import does not move meters between accounts",
                )
            )
        card = line.card
        if card is None:
            continue
        active = existing.active_cards.get(meter_no)
        if active is not None and active != card.card_no:
            problems.append(
                Problem(
                    line.row,
                    f"card_no {card.card_no}: meter {meter_no} already has active card {active} "
                    "in Ranqi; replace cards through 补卡, not an import",
                )
            )
        known_card = existing.cards.get(card.card_no)
        if known_card is not None:
            if known_card[1] != meter_no:
                problems.append(
                    Problem(
                        line.row,
                        f"card_no {card.card_no} belongs to meter {known_card[1]} in Ranqi; "
                        "an import does not move cards between meters",
                    )
                )
            _tag, _type, purchase_count, replacement_count = known_card[2]
            if card.purchase_count < purchase_count:
                problems.append(
                    Problem(
                        line.row,
                        f"purchase_count: {card.purchase_count} is below the card's "
                        f"{purchase_count} in Ranqi (the card has been used since)",
                    )
                )
            if card.replacement_count < replacement_count:
                problems.append(
                    Problem(
                        line.row,
                        f"replacement_count: {card.replacement_count} is below the card's "
                        f"{replacement_count} in Ranqi",
                    )
                )
        holder = existing.tags.get(card.tag_uid) if card.tag_uid else None
        if holder is not None and holder != card.card_no:
            problems.append(
                Problem(line.row, f"tag_uid {card.tag_uid} belongs to card {holder} in Ranqi")
            )


def _write_accounts(
    session: Session,
    lines: Sequence[_AccountLine],
    existing: _Existing,
    branches: dict[str, int],
    categories: dict[str, int],
    report: ImportReport,
) -> None:
    """Insert what is new and update what changed: a few statements per table, no per-row flush."""
    accounts = report.tallies["accounts"] = Tally()
    meters = report.tallies["meters"] = Tally()
    cards = report.tallies["cards"] = Tally()

    account_ids = {no: known[0] for no, known in existing.accounts.items()}
    new_accounts: list[dict[str, Any]] = []
    changed_accounts: list[dict[str, Any]] = []
    seen: set[str] = set()
    for line in lines:
        fields = line.account
        if fields.account_no in seen:
            continue
        seen.add(fields.account_no)
        values = {
            "holder_name": fields.holder_name,
            "phone": fields.phone,
            "address": fields.address,
            "branch_id": branches[fields.branch_code],
            "category_id": categories[fields.category_code],
            "household_size": fields.household_size,
            "subsidised": fields.subsidised,
        }
        known = existing.accounts.get(fields.account_no)
        if known is None:
            new_accounts.append({"account_no": fields.account_no, **values})
        elif known[1] != tuple(values.values()):
            changed_accounts.append({"id": known[0], **values})
        else:
            accounts.unchanged += 1
    account_ids.update(_insert_then_ids(session, Account, "account_no", new_accounts))
    _update_by_id(session, Account, changed_accounts)
    accounts.created, accounts.updated = len(new_accounts), len(changed_accounts)

    meter_ids = {no: known[0] for no, known in existing.meters.items()}
    new_meters: list[dict[str, Any]] = []
    changed_meters: list[dict[str, Any]] = []
    for line in lines:
        meter = line.meter
        values = {
            "kind": meter.kind,
            "capacity": meter.capacity,
            "opening_cycle_volume": meter.opening_cycle_volume,
            "opening_cycle_start": meter.opening_cycle_start,
        }
        known_meter = existing.meters.get(meter.meter_no)
        if known_meter is None:
            new_meters.append(
                {
                    "meter_no": meter.meter_no,
                    "account_id": account_ids[line.account.account_no],
                    **values,
                }
            )
        elif known_meter[2] != tuple(values.values()):
            changed_meters.append({"id": known_meter[0], **values})
        else:
            meters.unchanged += 1
    meter_ids.update(_insert_then_ids(session, Meter, "meter_no", new_meters))
    _update_by_id(session, Meter, changed_meters)
    meters.created, meters.updated = len(new_meters), len(changed_meters)

    new_cards: list[dict[str, Any]] = []
    changed_cards: list[dict[str, Any]] = []
    now = utcnow()
    for line in lines:
        card = line.card
        if card is None:
            continue
        # The card's state, pending volume and image belong to Ranqi's own card
        # operations; an import only carries the counts the old system knew.
        values = {
            "tag_uid": card.tag_uid,
            "tag_type": card.tag_type,
            "purchase_count": card.purchase_count,
            "replacement_count": card.replacement_count,
        }
        known_card = existing.cards.get(card.card_no)
        if known_card is None:
            new_cards.append(
                {
                    "card_no": card.card_no,
                    "meter_id": meter_ids[line.meter.meter_no],
                    "issued_at": now,
                    **values,
                }
            )
        elif known_card[2] != tuple(values.values()):
            changed_cards.append({"id": known_card[0], **values})
        else:
            cards.unchanged += 1
    for chunk in _chunks(new_cards):
        session.execute(insert(Card), list(chunk))
    _update_by_id(session, Card, changed_cards)
    cards.created, cards.updated = len(new_cards), len(changed_cards)

    # The bulk statements went around the identity map: make loaded objects re-read.
    session.expire_all()


def _insert_then_ids(
    session: Session, model: type[Account] | type[Meter], key: str, rows: list[dict[str, Any]]
) -> dict[str, int]:
    """Bulk-insert ``rows`` and map each one's ``key`` to its new id.

    The ids are read back by key rather than with INSERT ... RETURNING: a plain
    executemany is several times faster on psycopg, whose parsing of the big
    multi-row RETURNING statements dominated the PostgreSQL import.
    """
    if not rows:
        return {}
    for chunk in _chunks(rows):
        session.execute(insert(model), list(chunk))
    key_column = getattr(model, key)
    with _key_table(session, (row[key] for row in rows)) as keys:
        found = session.execute(select(key_column, model.id).join(keys, key_column == keys.c.key))
        return {k: id_ for k, id_ in found}


def _update_by_id(
    session: Session, model: type[Account] | type[Meter] | type[Card], rows: list[dict[str, Any]]
) -> None:
    """Update many rows by id with one UPDATE ... FROM a temporary table of the new values.

    One statement per row (ORM bulk update by primary key) was the slowest part of a
    re-import: minutes for 100 000 accounts on PostgreSQL. Both databases run
    UPDATE ... FROM (SQLite since 3.33); the temporary table goes with the transaction
    if anything fails.
    """
    if not rows:
        return
    target = model.__table__
    assert isinstance(target, SqlTable)
    names = list(rows[0])
    staging = SqlTable(
        f"ranqi_import_{target.name}",
        MetaData(),  # not Base.metadata: this table is no part of the schema
        *(Column(name, target.c[name].type, primary_key=name == "id") for name in names),
        prefixes=["TEMPORARY"],
    )
    connection = session.connection()
    staging.create(connection)
    for chunk in _chunks(rows):
        connection.execute(insert(staging), list(chunk))
    connection.execute(
        update(target)
        .where(target.c.id == staging.c.id)
        .values({name: staging.c[name] for name in names if name != "id"})
    )
    staging.drop(connection)


# --- tariffs -------------------------------------------------------------------------

TARIFF_REQUIRED = (
    "tariff_code",
    "name",
    "branch_code",
    "category_code",
    "effective_from",
    "min_purchase_m3",
    "max_purchase_m3",
    "tier",
    "price_yuan",
)
TARIFF_OPTIONAL = ("cycle_start_month", "upper_bound_m3")


@dataclass(frozen=True)
class _TariffFields:
    code: str
    name: str
    branch_code: str
    category_code: str
    effective_from: dt.date
    cycle_start_month: int
    min_purchase: int
    max_purchase: int


@dataclass(frozen=True)
class _TierLine:
    row: int
    tariff: _TariffFields
    position: int
    upper_bound: int | None
    price: Decimal
    #: False if a cell was bad
    valid: bool = True


def _read_tier_line(number: int, values: dict[str, str], problems: list[Problem]) -> _TierLine:
    cells = _Cells(number, values, problems)
    tariff = _TariffFields(
        code=cells.get("tariff_code", _TEXT_40, default="", required=True),
        name=cells.get("name", _TEXT_200, default="", required=True),
        branch_code=cells.get("branch_code", _TEXT_32, default="", required=True),
        category_code=cells.get("category_code", _TEXT_32, default="", required=True),
        effective_from=cells.get("effective_from", parse_date, default=dt.date.min, required=True),
        cycle_start_month=cells.get("cycle_start_month", parse_month, default=1),
        min_purchase=cells.get("min_purchase_m3", parse_positive_volume, default=0, required=True),
        max_purchase=cells.get("max_purchase_m3", parse_positive_volume, default=0, required=True),
    )
    line = _TierLine(
        row=number,
        tariff=tariff,
        position=cells.get("tier", parse_positive_count, default=0, required=True),
        upper_bound=cells.get("upper_bound_m3", parse_positive_volume, default=None),
        price=cells.get("price_yuan", parse_price, default=Decimal(0), required=True),
    )
    if not cells.failed and tariff.max_purchase < tariff.min_purchase:
        cells.problem("max_purchase_m3: is below min_purchase_m3")
    return replace(line, valid=not cells.failed)


def _check_tiers(code: str, tiers: list[_TierLine], problems: list[Problem]) -> None:
    """Tiers numbered 1, 2, 3...; bounds strictly increasing; only the last one open."""
    by_position: dict[int, _TierLine] = {}
    for line in tiers:
        if line.position in by_position:
            first = by_position[line.position].row
            problems.append(
                Problem(
                    line.row, f"tariff {code}: tier {line.position} appears twice (row {first})"
                )
            )
        else:
            by_position[line.position] = line
    expected = list(range(1, len(by_position) + 1))
    if sorted(by_position) != expected:
        problems.append(
            Problem(
                tiers[0].row,
                f"tariff {code}: tiers must be numbered 1, 2, 3... without gaps "
                f"(found {', '.join(str(p) for p in sorted(by_position))})",
            )
        )
        return
    ordered = [by_position[p] for p in expected]
    previous: int | None = None
    for line in ordered[:-1]:
        if line.upper_bound is None:
            problems.append(
                Problem(line.row, f"tariff {code}: upper_bound_m3 is required below the last tier")
            )
        elif previous is not None and line.upper_bound <= previous:
            problems.append(
                Problem(
                    line.row,
                    f"tariff {code}: tier {line.position}'s upper_bound_m3 must be above "
                    f"tier {line.position - 1}'s (tiers not increasing)",
                )
            )
        if line.upper_bound is not None:
            previous = line.upper_bound
    last = ordered[-1]
    if last.upper_bound is not None:
        problems.append(
            Problem(
                last.row,
                f"tariff {code}: the last tier ({last.position}) must leave upper_bound_m3 blank",
            )
        )


def import_tariffs(session: Session, table: Table) -> ImportReport:
    """Validate every row, then create or update tariffs and their tiers (one row per tier).

    Discount policies are not imported; a tariff's existing discounts are left as they are.
    """
    report = ImportReport(problems=list(table.problems))
    problems = report.problems
    if not _check_columns(table, TARIFF_REQUIRED, TARIFF_OPTIONAL, problems):
        problems.sort(key=_by_row)
        return report
    by_code: dict[str, list[_TierLine]] = {}
    for number, values in table.rows:
        line = _read_tier_line(number, values, problems)
        if line.tariff.code:
            by_code.setdefault(line.tariff.code, []).append(line)

    session.flush()
    branches = _codes(session, Branch)
    categories = _codes(session, CustomerCategory)
    existing = {
        tariff.code: tariff
        for tariff in session.scalars(select(Tariff).options(selectinload(Tariff.tiers)))
    }
    starts: dict[tuple[str, str, dt.date], str] = {
        (tariff.branch.code, tariff.category.code, tariff.effective_from): tariff.code
        for tariff in existing.values()
        if tariff.code not in by_code
    }
    for code, tiers in by_code.items():
        fields = tiers[0].tariff
        codes = (fields.branch_code, fields.category_code)
        _check_codes(problems, tiers[0].row, codes, branches, categories)
        if not all(line.valid for line in tiers):
            continue  # its tiers cannot be checked against each other
        for line in tiers[1:]:
            if line.tariff != fields:
                problems.append(
                    Problem(
                        line.row,
                        f"tariff {code}: its columns differ from row {tiers[0].row} "
                        "(repeat the tariff's columns unchanged on each tier)",
                    )
                )
        start = (fields.branch_code, fields.category_code, fields.effective_from)
        if start in starts:
            problems.append(
                Problem(
                    tiers[0].row,
                    f"tariff {code}: tariff {starts[start]} already prices {fields.category_code} "
                    f"at {fields.branch_code} from {fields.effective_from}",
                )
            )
        else:
            starts[start] = code
        _check_tiers(code, tiers, problems)
    if problems:
        problems.sort(key=_by_row)
        return report
    _write_tariffs(session, by_code, existing, branches, categories, report)
    return report


def _write_tariffs(
    session: Session,
    by_code: dict[str, list[_TierLine]],
    existing: dict[str, Tariff],
    branches: dict[str, int],
    categories: dict[str, int],
    report: ImportReport,
) -> None:
    """Tariffs are few: plain ORM objects, tiers updated in place (position is unique)."""
    tariffs = report.tallies["tariffs"] = Tally()
    tier_tally = report.tallies["tiers"] = Tally()
    for code, lines in by_code.items():
        fields = lines[0].tariff
        values: dict[str, Any] = {
            "name": fields.name,
            "branch_id": branches[fields.branch_code],
            "category_id": categories[fields.category_code],
            "effective_from": fields.effective_from,
            "cycle_start_month": fields.cycle_start_month,
            "min_purchase": fields.min_purchase,
            "max_purchase": fields.max_purchase,
        }
        tariff = existing.get(code)
        if tariff is None:
            tariff = Tariff(code=code, **values)
            session.add(tariff)
            tariffs.created += 1
        elif any(getattr(tariff, name) != value for name, value in values.items()):
            for name, value in values.items():
                setattr(tariff, name, value)
            tariffs.updated += 1
        else:
            tariffs.unchanged += 1
        old = {tier.position: tier for tier in tariff.tiers}
        new_positions = set()
        for line in sorted(lines, key=lambda line: line.position):
            new_positions.add(line.position)
            tier = old.get(line.position)
            if tier is None:
                tariff.tiers.append(
                    TariffTier(
                        position=line.position, upper_bound=line.upper_bound, price=line.price
                    )
                )
                tier_tally.created += 1
            elif tier.upper_bound != line.upper_bound or tier.price != line.price:
                tier.upper_bound, tier.price = line.upper_bound, line.price
                tier_tally.updated += 1
            else:
                tier_tally.unchanged += 1
        for position, tier in old.items():
            if position not in new_positions:
                tariff.tiers.remove(tier)
                tier_tally.removed += 1
    session.flush()
