"""Fixtures for the browser tests: headless Chromium (Debian's package, driven by Playwright)
and the real app served on loopback in sandbox payment mode with the demo data.

Chromium is not optional: when it is missing the tests fail and say what to install
(CI: ``apt-get install chromium fonts-wqy-zenhei``); ``playwright install`` cannot
download browsers on this network.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from models import demo
from portal import create_app
from portal import db as portal_db
from tests.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: F401  (shared with other browser tests)
from tests.http_server import serve

#: screenshots of each step, kept for people (git-ignored)
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture
def sandbox_site(fresh_engine: Engine, tmp_path: Path) -> Iterator[tuple[Flask, str]]:
    """The app with the sandbox gateways and the demo utility, served on a loopback port.

    The database commits (a fresh one); the sandbox's keys and store live under tmp.
    """
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    app = create_app(
        {
            "DATABASE_URL": fresh_engine.url.render_as_string(hide_password=False),
            "PAYMENTS": "sandbox",
            "PUBLIC_URL": public_url,
            "INSTANCE_PATH": tmp_path,
        }
    )
    with Session(fresh_engine) as s:
        demo.load(s)
        s.commit()
    with serve(app, port=port) as url:
        assert url == public_url
        yield app, url
    portal_db.database(app).engine.dispose()
