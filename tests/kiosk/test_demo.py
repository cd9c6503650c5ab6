"""The demo end to end, through the kiosk UI's routes, against a real portal on loopback.

Buy at the kiosk (QR → sandbox cashier → Pay → notify), a torn tap, a tap that loads,
the meter taking the gas, burning it until the valve closes, a leak alarm, and the
next tap carrying the meter's report to the server.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

import portal.kiosk_orders
from kiosk import receipt
from kiosk.demo import CARDS_FILE, Demo
from kiosk.ui import SellingClient, ui_context
from models import demo as demo_data
from models import ledger
from models.orders import Credit
from models.staff import Kiosk, SafetyCase
from portal import create_app, providers
from portal import db as portal_db
from portal.cli_demo_cards import demo_cards_command
from portal.kiosk_auth import hash_secret
from tests.http_server import serve
from tests.test_portal_sandbox_payments import _free_port, _press_pay


@pytest.fixture
def portal(fresh_engine: Engine, tmp_path: Path) -> Iterator[tuple[Flask, str]]:
    port = _free_port()
    app = create_app(
        {
            "DATABASE_URL": fresh_engine.url.render_as_string(hide_password=False),
            "PAYMENTS": "sandbox",
            "PUBLIC_URL": f"http://127.0.0.1:{port}",
            "INSTANCE_PATH": tmp_path / "instance",
        }
    )
    with Session(fresh_engine) as s:
        demo_data.load(s)
        s.commit()
    with serve(app, port=port) as url:
        yield app, url
    portal_db.database(app).engine.dispose()


@pytest.fixture
def running(portal: tuple[Flask, str], fresh_engine: Engine, tmp_path: Path) -> Iterator[Demo]:
    app, url = portal
    directory = tmp_path / "demo"
    app.cli.add_command(demo_cards_command)
    result = app.test_cli_runner().invoke(args=["demo-cards", str(directory)])
    assert result.exit_code == 0, result.output
    assert "11 demo cards" in result.output
    assert (directory / CARDS_FILE).stat().st_mode & 0o777 == 0o600
    secret = secrets.token_urlsafe(16)
    with Session(fresh_engine) as s:
        s.add(
            Kiosk(name="Demo kiosk", client_id="demo-test", client_secret_hash=hash_secret(secret))
        )
        s.commit()
    client = SellingClient(url, "demo-test", secret)
    printer = receipt.open_printer(f"file:{tmp_path / 'receipts.bin'}")
    demo = Demo(directory, client, reader_wait=0.3, printer=printer, kiosk_name="Demo kiosk")
    demo.start()
    try:
        yield demo
    finally:
        demo.stop()
        client.close()
        printer.close()


def next_tap(demo: Demo, seq: int, timeout: float = 15.0) -> int:
    """Wait until the reader has served a tap newer than ``seq``; its number."""
    screen = ui_context(demo.app).screen
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest, _ = screen.latest()
        if latest > seq:
            return latest
        time.sleep(0.05)
    raise AssertionError("no tap was served")


def test_the_whole_loop(running: Demo, portal: tuple[Flask, str], tmp_path: Path) -> None:
    demo = running
    app, _url = portal
    ui = demo.app.test_client()
    assert "请刷卡" in ui.get("/").get_data(as_text=True)
    panel = ui.get("/demo").get_data(as_text=True)
    assert "C100000011" in panel and "N=0" in panel and "kiosk holds none" in panel

    # 1. a first tap: nothing to load yet; the screen offers to sell gas
    ui.post("/demo/tap", data={"card": "0"})
    seq = next_tap(demo, 0)
    page = ui.get("/screen?since=0", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "卡已是最新" in page and "10000001" in page and "/buy" in page
    ui.post("/demo/take")

    # 2. buy 10 m³ at the kiosk: a QR code for the sandbox cashier; press Pay there
    form = ui.get("/buy").get_data(as_text=True)
    assert 'action="/buy/quote"' in form
    quoted = ui.get("/buy/quote?channel=alipay&volume=1000&lang=en").get_data(as_text=True)
    assert "Tier 1" in quoted and "10.00 m³" in quoted and "26.10" in quoted
    key = re.search(r'name="key" value="([0-9a-f]+)"', quoted)
    assert key is not None
    refused = ui.get("/buy/quote?channel=alipay&volume=9000000").get_data(as_text=True)
    assert "无法下单" in refused
    bought = ui.post("/buy", data={"channel": "alipay", "volume": "1000", "key": key.group(1)})
    again = ui.post("/buy", data={"channel": "alipay", "volume": "1000", "key": key.group(1)})
    assert again.headers["Location"] == bought.headers["Location"]  # a double press: one order
    assert bought.status_code == 302, bought.get_data(as_text=True)
    pay_page = ui.get(bought.headers["Location"]).get_data(as_text=True)
    assert "<svg" in pay_page
    cashier = re.search(r'<a href="([^"]+)" target="_blank"', pay_page)
    assert cashier is not None and cashier.group(1).startswith(_url)
    order_no = bought.headers["Location"].rsplit("/", 1)[1]
    state_url = f"/buy/{order_no}/state"
    assert "等待付款" in ui.get(state_url).get_data(as_text=True)
    _press_pay(cashier.group(1).replace("&amp;", "&"))
    sender = providers.sandbox_sender(app)
    assert sender is not None and sender.deliver_once() == 1
    assert "付款成功" in ui.get(state_url).get_data(as_text=True)

    # 3. tap, but the card leaves at its third WRITE: nothing confirmed, tap again
    ui.post("/demo/tap", data={"card": "0", "pull": "3"})
    seq = next_tap(demo, seq)
    assert "卡片离开过早" in ui.get(f"/screen?since={seq - 1}").get_data(as_text=True)
    ui.post("/demo/take")

    # 4. tap again: the torn write is reissued and completed
    ui.post("/demo/tap", data={"card": "0"})
    seq = next_tap(demo, seq)
    page = ui.get(f"/screen?since={seq - 1}&lang=en").get_data(as_text=True)
    assert "Gas loaded" in page and "10.00 m³" in page
    ui.post("/demo/take")

    # 5. the meter takes the gas and opens its valve; burn it all: the valve closes
    ui.post("/demo/meter", data={"card": "0"})
    meter = demo.card(0).meter
    assert (meter.remaining, meter.purchase_count, meter.valve_open) == (1000, 1, True)
    panel = ui.get("/demo/panel").get_data(as_text=True)
    assert "left <b>10.00 m³</b>" in panel and "applied N=1" in panel
    ui.post("/demo/burn", data={"card": "0", "m3": "10"})
    assert (meter.remaining, meter.valve_open) == (0, False)
    ui.post("/demo/alarm", data={"card": "0"})
    ui.post("/demo/meter", data={"card": "0"})  # the meter writes its report with the alarm
    assert "closed (leak)" in ui.get("/demo/panel").get_data(as_text=True)

    # 6. the next tap carries the report: applied, and a safety case for the leak
    ui.post("/demo/tap", data={"card": "0"})
    seq = next_tap(demo, seq)
    page = ui.get(f"/screen?since={seq - 1}&lang=en").get_data(as_text=True)
    assert "Your card is up to date" in page and "leak" in page
    ui.post("/demo/take")
    with Session(portal_db.database(app).engine) as s:
        (credit,) = s.scalars(select(Credit)).all()
        assert (credit.state, credit.volume) == ("applied", 1000)
        assert [case.kind for case in s.scalars(select(SafetyCase))] == ["leak"]
        assert ledger.check(s) == []

    # receipts: one for the payment, one for the load
    out = (tmp_path / "receipts.bin").read_bytes()
    assert out.count(b"Gas purchase paid") == 1 and order_no.encode() in out
    assert out.count(b"Gas loaded onto card") == 1 and b"10.00 m3" in out

    # the meters' state survives a restart of the demo
    state = json.loads((demo.directory / "meters.json").read_text())
    assert state["M100000011"]["purchase_count"] == 1
    assert state["M100000011"]["valve_closed_for"] == "leak"


def test_bad_controls_are_refused(running: Demo) -> None:
    ui = running.app.test_client()
    assert ui.post("/demo/tap", data={"card": "99"}).status_code == 400
    assert ui.post("/demo/burn", data={"card": "0", "m3": "-1"}).status_code == 400
    assert running.field.card is None
    assert running.card(0).meter.total_used == 0
