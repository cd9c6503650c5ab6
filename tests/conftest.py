"""Fixtures: ``app``, ``client``, ``db`` on SQLite or on PostgreSQL (``TEST_DATABASE_URL``).

The schema is made once per run by the Alembic migrations; each test runs inside a
transaction that is rolled back at its end.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from playwright.sync_api import Browser, Playwright, sync_playwright
from sqlalchemy import Engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from models import migrate
from portal import create_app
from portal import db as portal_db
from portal.db import make_engine

LOOPBACK = {"127.0.0.1", "::1", "localhost"}

#: Debian's chromium; RANQI_CHROMIUM overrides it
CHROMIUM = Path(os.environ.get("RANQI_CHROMIUM", "/usr/bin/chromium"))
#: without the background-networking flags Chromium dials out at start-up, and this
#: machine's closed network refuses it; --no-sandbox because the tests may run as root
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any network connection that is not to this machine."""
    real_connect = socket.socket.connect

    def guarded(sock: socket.socket, address: Any) -> Any:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            host = address[0]
            if host not in LOOPBACK and not str(host).startswith("127."):
                raise ConnectionRefusedError(f"tests may not connect to {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)


def test_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        return url
    path: Path = tmp_path_factory.mktemp("db") / "test.sqlite3"
    return f"sqlite:///{path}"


@pytest.fixture(scope="session")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An engine on a schema made from scratch by the migrations."""
    eng = make_engine(test_database_url(tmp_path_factory))
    if eng.dialect.name == "postgresql":
        with eng.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    migrate.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def connection(engine: Engine) -> Iterator[Connection]:
    conn = engine.connect()
    trans = conn.begin()
    yield conn
    trans.rollback()
    conn.close()


@pytest.fixture
def app(engine: Engine, connection: Connection) -> Iterator[Flask]:
    application = create_app({"DATABASE_URL": engine.url.render_as_string(hide_password=False)})
    portal_db.database(application).bind_to(connection)
    yield application
    portal_db.database(application).engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def db(app: Flask) -> Iterator[Session]:
    """The session the app uses in this test (requests made by ``client`` share it)."""
    with app.app_context():
        session = portal_db.session()
        yield session


@pytest.fixture
def fresh_engine(engine: Engine, tmp_path: Path) -> Iterator[Engine]:
    """A database of its own, migrated, for tests that commit (concurrency, jobs).

    On PostgreSQL a new database on the test server, dropped afterwards; on SQLite a
    new file. At the end the ledger check must pass on what the test left.
    """
    if engine.dialect.name != "postgresql":
        eng = make_engine(f"sqlite:///{tmp_path / 'fresh.sqlite3'}")
        migrate.upgrade(eng)
        yield eng
        _books_balance(eng)
        eng.dispose()
        return
    name = f"ranqi_fresh_{os.getpid()}_{next(_fresh_counter)}"
    admin = make_engine(engine.url.render_as_string(hide_password=False)).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    eng = make_engine(engine.url.set(database=name).render_as_string(hide_password=False))
    try:
        migrate.upgrade(eng)
        yield eng
        _books_balance(eng)
    finally:
        eng.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


_fresh_counter = itertools.count()


def _books_balance(eng: Engine) -> None:
    """Every test that commits leaves a ledger that `ranqi ledger check` accepts."""
    from models import ledger

    with Session(eng) as session:
        problems = ledger.check(session)
    assert problems == [], "ledger check failed after the test:\n" + "\n".join(map(str, problems))


# One Playwright driver for the whole run: the sync API refuses a second one while the
# first (in its greenlet) is alive, so every browser test shares these.
@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def chromium(playwright_driver: Playwright) -> Iterator[Browser]:
    """Headless Chromium; a missing browser is a failure that says what to install."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: the residents' browser tests need it. "
            "Install it with `apt-get install chromium fonts-wqy-zenhei` "
            "(or set RANQI_CHROMIUM to a Chromium binary).",
            pytrace=False,
        )
    browser = playwright_driver.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
    )
    yield browser
    browser.close()
