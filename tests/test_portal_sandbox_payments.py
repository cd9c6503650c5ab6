"""End to end in sandbox mode: order → provider SDK → sandbox cashier → notify → paid.

The app runs on a real loopback port with the sandbox gateways mounted; the adapters
talk to them over HTTP through the SDKs' own code paths, the payer presses Pay on the
cashier page, the sandbox's sender posts the signed notify to the app's callback.
"""

from __future__ import annotations

import datetime as dt
import html
import re
import socket
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from models import demo, ledger
from models.base import utcnow
from models.ordering import create_order
from models.orders import Credit, Order, PaymentEvent
from models.quotes import find_meter, quote
from models.tariffs import Tariff
from payments.base import PaymentRequest, PayScene
from portal import create_app, providers
from portal import db as portal_db
from portal.config import ConfigError
from tests.http_server import serve


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def sandbox_app(fresh_engine: Engine, tmp_path: Path) -> Iterator[tuple[Flask, str]]:
    port = _free_port()
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


def _order(app: Flask, channel: str) -> Order:
    with Session(portal_db.database(app).engine, expire_on_commit=False) as s:
        meter = find_meter(s, "10000005", None)
        quoted = quote(s, meter=meter, volume=10000, at=utcnow())
        tariff = s.scalar(select(Tariff).where(Tariff.code == quoted.tariff_code))
        assert tariff is not None
        order = create_order(
            s,
            meter=meter,
            tariff_id=tariff.id,
            volume=quoted.volume,
            amount=quoted.amount,
            quote=quoted.as_dict(),
            channel=channel,
            now=utcnow(),
            ttl=dt.timedelta(minutes=15),
        )
        s.commit()
        return order


def _press_pay(cashier_url: str) -> None:
    """What a payer does on the sandbox's cashier page: press 支付 Pay."""
    with urllib.request.urlopen(cashier_url, timeout=10) as response:  # noqa: S310
        page = response.read().decode()
        cashier_url = response.geturl()  # after the gateway's redirect to its cashier
    form = re.search(r'<form[^>]*method="post"[^>]*>(.*?)</form>', page, re.S | re.I)
    assert form is not None, page
    action_match = re.search(r'action="([^"]*)"', form.group(0))
    action = urllib.parse.urljoin(
        cashier_url, html.unescape(action_match.group(1)) if action_match else ""
    )
    fields = {
        html.unescape(n): html.unescape(v)
        for n, v in re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(1))
    }
    fields["action"] = "pay"
    request = urllib.request.Request(  # noqa: S310 - the sandbox on loopback
        action,
        data=urllib.parse.urlencode(fields).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        assert response.status == 200


@pytest.mark.parametrize(
    ("channel", "scene"),
    [
        ("alipay", PayScene.wap),
        ("alipay", PayScene.qr),
        ("wechat", PayScene.h5),
        ("wechat", PayScene.qr),
        ("wechat_v2", PayScene.h5),
        ("wechat_v2", PayScene.qr),
    ],
)
def test_pay_in_the_sandbox(sandbox_app: tuple[Flask, str], channel: str, scene: PayScene) -> None:
    app, url = sandbox_app
    order = _order(app, channel)
    provider = app.extensions["ranqi_providers"][channel]
    start = provider.create_payment(
        PaymentRequest(
            order_no=order.order_no,
            amount=order.amount,
            subject="燃气费 户号10000005 100 m3",
            scene=scene,
            notify_url=providers.notify_url(app, channel),
            return_url=url + "/",
            expires_at=utcnow() + dt.timedelta(minutes=15),
        )
    )
    cashier = start.redirect_url or start.qr_code
    assert cashier is not None and cashier.startswith(url)
    _press_pay(cashier)

    sender = providers.sandbox_sender(app)
    assert sender is not None
    assert sender.deliver_once() == 1
    with Session(portal_db.database(app).engine) as s:
        paid = s.get(Order, order.id)
        assert paid is not None and paid.state == "paid"
        assert paid.provider_trade_no
        assert s.scalar(select(func.count()).select_from(Credit)) == 1
        events = s.scalars(select(PaymentEvent)).all()
        assert [(e.verified, e.outcome) for e in events] == [(True, "paid")]
        assert ledger.check(s) == []
    (queued,) = app.extensions["ranqi_sandbox_store"].notifies(channel, order.order_no)
    assert queued["delivered_at"] is not None  # our answer was what the provider expects


def test_sandbox_is_refused_in_production(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="production"):
        create_app({"RANQI_ENV": "production", "PAYMENTS": "sandbox", "INSTANCE_PATH": tmp_path})


def test_wechat_v3_retry_is_signed_afresh(sandbox_app: tuple[Flask, str]) -> None:
    """A v3 notify retried after five minutes carries a fresh signature, as WeChat's does."""
    import json

    from payments.sandbox import wechat_v3 as v3_sandbox

    app, _url = sandbox_app
    order = _order(app, "wechat")
    provider = app.extensions["ranqi_providers"]["wechat"]
    start = provider.create_payment(
        PaymentRequest(
            order_no=order.order_no,
            amount=order.amount,
            subject="燃气费",
            scene=PayScene.qr,
            notify_url=providers.notify_url(app, "wechat"),
        )
    )
    assert start.qr_code is not None
    _press_pay(start.qr_code)
    store = app.extensions["ranqi_sandbox_store"]
    (queued,) = store.notifies("wechat", order.order_no)
    config = app.extensions["ranqi_sandbox_wechat_v3"]
    stale = v3_sandbox.signed_headers(
        config, bytes(queued["body"]), at=utcnow() - dt.timedelta(minutes=10)
    )
    with store.connect() as conn:  # as if this were the first attempt's headers, 10 min ago
        conn.execute(
            "UPDATE notify SET headers = ? WHERE id = ?",
            (json.dumps(json.loads(queued["headers"]) | stale), queued["id"]),
        )
    sender = providers.sandbox_sender(app)
    assert sender is not None and sender.deliver_once() == 1
    with Session(portal_db.database(app).engine) as s:
        assert s.get(Order, order.id).state == "paid"  # type: ignore[union-attr]

    unsigned = providers.sandbox_sender(app)
    assert unsigned is not None
    unsigned.resigners = {}  # without re-signing, the stale headers are refused
    order2 = _order(app, "wechat")
    start = provider.create_payment(
        PaymentRequest(
            order_no=order2.order_no,
            amount=order2.amount,
            subject="燃气费",
            scene=PayScene.qr,
            notify_url=providers.notify_url(app, "wechat"),
        )
    )
    assert start.qr_code is not None
    _press_pay(start.qr_code)
    (queued,) = store.notifies("wechat", order2.order_no)
    stale = v3_sandbox.signed_headers(
        config, bytes(queued["body"]), at=utcnow() - dt.timedelta(minutes=10)
    )
    with store.connect() as conn:
        conn.execute(
            "UPDATE notify SET headers = ? WHERE id = ?",
            (json.dumps(json.loads(queued["headers"]) | stale), queued["id"]),
        )
    assert unsigned.deliver_once() == 1
    with Session(portal_db.database(app).engine) as s:
        assert s.get(Order, order2.id).state == "created"  # type: ignore[union-attr]
        rejected = s.scalars(select(PaymentEvent).where(PaymentEvent.verified.is_(False))).all()
        assert [e.outcome for e in rejected] == ["rejected"]
        assert "timestamp" in rejected[0].detail.lower()
