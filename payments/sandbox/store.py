"""The sandbox gateways' memory: trades, refunds and queued notifies in one SQLite file.

Shared by the Alipay and WeChat sandboxes; safe across threads and processes (SQLite
locking), so several gunicorn workers see the same trades.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS trade (
    provider TEXT NOT NULL,
    order_no TEXT NOT NULL,
    trade_no TEXT NOT NULL UNIQUE,
    app_id TEXT NOT NULL,
    merchant_id TEXT NOT NULL,
    amount INTEGER NOT NULL,
    subject TEXT NOT NULL,
    status TEXT NOT NULL,
    notify_url TEXT NOT NULL,
    return_url TEXT NOT NULL DEFAULT '',
    extra TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    paid_at TEXT,
    closed_at TEXT,
    PRIMARY KEY (provider, order_no)
);
CREATE TABLE IF NOT EXISTS refund (
    provider TEXT NOT NULL,
    refund_no TEXT NOT NULL,
    order_no TEXT NOT NULL,
    amount INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (provider, refund_no)
);
CREATE TABLE IF NOT EXISTS notify (
    id INTEGER PRIMARY KEY,
    provider TEXT NOT NULL,
    order_no TEXT NOT NULL,
    url TEXT NOT NULL,
    body BLOB NOT NULL,
    headers TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at TEXT NOT NULL,
    delivered_at TEXT,
    last_answer TEXT NOT NULL DEFAULT ''
);
"""


@dataclass(frozen=True)
class QueuedNotify:
    id: int
    provider: str
    order_no: str
    url: str
    body: bytes
    headers: dict[str, str]
    attempts: int


class SandboxStore:
    """Trades, refunds and notifies of the sandbox gateways, in SQLite at ``path``."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._memory: sqlite3.Connection | None = None
        with self.connect() as conn:
            conn.executescript(SCHEMA)

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in one transaction (committed on success)."""
        with self._lock:
            if self.path == ":memory:":
                if self._memory is None:
                    self._memory = sqlite3.connect(":memory:", check_same_thread=False)
                conn = self._memory
            else:
                conn = sqlite3.connect(self.path, timeout=30)
            conn.row_factory = sqlite3.Row
            try:
                with conn:
                    yield conn
            finally:
                if conn is not self._memory:
                    conn.close()

    # trades -------------------------------------------------------------------------
    def create_trade(self, **fields: Any) -> dict[str, Any]:
        """Insert a trade, or return the existing one for the same provider and order."""
        fields.setdefault("extra", {})
        fields["extra"] = json.dumps(fields["extra"])
        fields.setdefault("created_at", _now())
        with self.connect() as conn:
            existing = conn.execute(
                "SELECT * FROM trade WHERE provider = ? AND order_no = ?",
                (fields["provider"], fields["order_no"]),
            ).fetchone()
            if existing is not None:
                return _trade(existing)
            columns = ", ".join(fields)
            marks = ", ".join("?" for _ in fields)
            conn.execute(f"INSERT INTO trade ({columns}) VALUES ({marks})", tuple(fields.values()))  # noqa: S608
            row = conn.execute(
                "SELECT * FROM trade WHERE provider = ? AND order_no = ?",
                (fields["provider"], fields["order_no"]),
            ).fetchone()
            return _trade(row)

    def trade(self, provider: str, order_no: str) -> dict[str, Any] | None:
        with self.connect() as conn:
            row = conn.execute(
                "SELECT * FROM trade WHERE provider = ? AND order_no = ?", (provider, order_no)
            ).fetchone()
            return _trade(row) if row is not None else None

    def trade_by_no(self, trade_no: str) -> dict[str, Any] | None:
        with self.connect() as conn:
            row = conn.execute("SELECT * FROM trade WHERE trade_no = ?", (trade_no,)).fetchone()
            return _trade(row) if row is not None else None

    def set_status(
        self, provider: str, order_no: str, status: str, *, only_from: tuple[str, ...] = ()
    ) -> bool:
        """Move a trade to ``status`` (only from the listed states, if given); True if moved."""
        now = _now()
        sql = "UPDATE trade SET status = ?"
        params: list[Any] = [status]
        if status in {"paid"}:
            sql += ", paid_at = ?"
            params.append(now)
        if status in {"closed"}:
            sql += ", closed_at = ?"
            params.append(now)
        sql += " WHERE provider = ? AND order_no = ?"
        params += [provider, order_no]
        if only_from:
            sql += f" AND status IN ({', '.join('?' for _ in only_from)})"
            params += list(only_from)
        with self.connect() as conn:
            return conn.execute(sql, params).rowcount == 1

    def trades_on(self, provider: str, day: dt.date) -> list[dict[str, Any]]:
        """Trades paid on ``day`` (UTC+8 calendar day), for the daily bill."""
        start = dt.datetime.combine(day, dt.time(), dt.timezone(dt.timedelta(hours=8)))
        end = start + dt.timedelta(days=1)
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT * FROM trade WHERE provider = ? AND paid_at >= ? AND paid_at < ?",
                (
                    provider,
                    start.astimezone(dt.UTC).isoformat(),
                    end.astimezone(dt.UTC).isoformat(),
                ),
            ).fetchall()
            return [_trade(r) for r in rows]

    # refunds ------------------------------------------------------------------------
    def add_refund(
        self, provider: str, refund_no: str, order_no: str, amount: int
    ) -> dict[str, Any]:
        """Record a refund (idempotent on refund_no); refuse more than the trade's amount."""
        with self.connect() as conn:
            existing = conn.execute(
                "SELECT * FROM refund WHERE provider = ? AND refund_no = ?", (provider, refund_no)
            ).fetchone()
            if existing is not None:
                return dict(existing)
            conn.execute(
                "INSERT INTO refund (provider, refund_no, order_no, amount, status, created_at) "
                "VALUES (?, ?, ?, ?, 'succeeded', ?)",
                (provider, refund_no, order_no, amount, _now()),
            )
            row = conn.execute(
                "SELECT * FROM refund WHERE provider = ? AND refund_no = ?", (provider, refund_no)
            ).fetchone()
            return dict(row)

    def refunded_total(self, provider: str, order_no: str) -> int:
        with self.connect() as conn:
            total = conn.execute(
                "SELECT COALESCE(SUM(amount), 0) FROM refund WHERE provider = ? AND order_no = ?",
                (provider, order_no),
            ).fetchone()[0]
            return int(total)

    def refunds_on(self, provider: str, day: dt.date) -> list[dict[str, Any]]:
        start = dt.datetime.combine(day, dt.time(), dt.timezone(dt.timedelta(hours=8)))
        end = start + dt.timedelta(days=1)
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT * FROM refund WHERE provider = ? AND created_at >= ? AND created_at < ?",
                (
                    provider,
                    start.astimezone(dt.UTC).isoformat(),
                    end.astimezone(dt.UTC).isoformat(),
                ),
            ).fetchall()
            return [dict(r) for r in rows]

    # notifies -----------------------------------------------------------------------
    def queue_notify(
        self, provider: str, order_no: str, url: str, body: bytes, headers: dict[str, str]
    ) -> int:
        with self.connect() as conn:
            cursor = conn.execute(
                "INSERT INTO notify (provider, order_no, url, body, headers, next_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (provider, order_no, url, body, json.dumps(headers), _now()),
            )
            return int(cursor.lastrowid or 0)

    def deliver_due(
        self,
        post: Callable[[QueuedNotify], tuple[bool, str]],
        schedules: dict[str, list[float]],
        *,
        now: dt.datetime | None = None,
    ) -> int:
        """Post every notify that is due; reschedule failures by the provider's schedule.

        ``post`` returns (accepted, answer). ``schedules[provider]`` lists the waits in
        seconds after each failed attempt; when it runs out the notify is given up.
        Returns how many were attempted.
        """
        now = now or dt.datetime.now(dt.UTC)
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT * FROM notify WHERE delivered_at IS NULL AND next_at <= ? ORDER BY id",
                (now.isoformat(),),
            ).fetchall()
        for row in rows:
            item = QueuedNotify(
                id=row["id"],
                provider=row["provider"],
                order_no=row["order_no"],
                url=row["url"],
                body=bytes(row["body"]),
                headers=json.loads(row["headers"]),
                attempts=row["attempts"],
            )
            accepted, answer = post(item)
            attempts = item.attempts + 1
            schedule = schedules.get(item.provider, [])
            with self.connect() as conn:
                if accepted:
                    conn.execute(
                        "UPDATE notify SET attempts = ?, delivered_at = ?, last_answer = ? "
                        "WHERE id = ?",
                        (attempts, _now(), answer[:200], item.id),
                    )
                elif attempts <= len(schedule):
                    wait = dt.timedelta(seconds=schedule[attempts - 1])
                    conn.execute(
                        "UPDATE notify SET attempts = ?, next_at = ?, last_answer = ? WHERE id = ?",
                        (attempts, (now + wait).isoformat(), answer[:200], item.id),
                    )
                else:  # given up, as the provider would
                    conn.execute(
                        "UPDATE notify SET attempts = ?, next_at = ?, last_answer = ? WHERE id = ?",
                        (attempts, "9999", answer[:200], item.id),
                    )
        return len(rows)

    def notifies(self, provider: str, order_no: str) -> list[dict[str, Any]]:
        with self.connect() as conn:
            rows = conn.execute(
                "SELECT * FROM notify WHERE provider = ? AND order_no = ? ORDER BY id",
                (provider, order_no),
            ).fetchall()
            return [dict(r) for r in rows]


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat()


def _trade(row: sqlite3.Row) -> dict[str, Any]:
    trade = dict(row)
    trade["extra"] = json.loads(trade["extra"])
    return trade
