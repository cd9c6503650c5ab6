"""Walk-up purchase at a kiosk: POST /kiosk/api/v1/orders and GET /kiosk/api/v1/orders/{no}."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import portal.kiosk_orders  # noqa: F401  (adds the order routes to the kiosk blueprint)
from models import demo
from models.accounts import Card
from models.orders import Order
from payments.base import PaymentRequest, PaymentStart, PayScene
from portal.kiosk_orders import KIOSK_ORDERS_OPENAPI_PATHS
from tests.fake_provider import FakeProvider, sign
from tests.test_portal_kiosk_api import kiosk_token

ORDERS = "/kiosk/api/v1/orders"


class QrFake(FakeProvider):
    """The fake provider with a QR scene, remembering what it was asked to start."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.started: list[PaymentRequest] = []

    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        self.started.append(request)
        if request.scene is PayScene.qr:
            return PaymentStart(qr_code=f"https://fake.invalid/qr/{request.order_no}")
        return super().create_payment(request)


@pytest.fixture
def fakes(app: Flask) -> dict[str, QrFake]:
    registry = {"alipay": QrFake("alipay"), "wechat": QrFake("wechat")}
    app.extensions["ranqi_providers"] = registry
    return registry


@pytest.fixture
def demo_db(db: Session) -> Session:
    demo.load(db)
    db.commit()
    return db


@pytest.fixture
def auth(client: FlaskClient, demo_db: Session) -> dict[str, str]:
    return {"Authorization": f"Bearer {kiosk_token(client, demo_db)}"}


def post(client: FlaskClient, auth: dict[str, str], body: Any, key: str | None = None) -> Any:
    headers = dict(auth)
    if key:
        headers["Idempotency-Key"] = key
    return client.post(ORDERS, json=body, headers=headers)


def orders(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(Order)) or 0


def test_sell_by_card_number_starts_a_qr_payment(
    client: FlaskClient, demo_db: Session, fakes: dict[str, QrFake], auth: dict[str, str]
) -> None:
    response = post(client, auth, {"card_no": "C100000011", "volume": 10000, "channel": "alipay"})
    assert response.status_code == 201, response.json
    body = response.get_json()
    order_no = body["order_no"]
    assert body["qr_code"] == f"https://fake.invalid/qr/{order_no}"
    assert (body["state"], body["amount"], body["volume"]) == ("paying", 27200, 10000)
    assert [p["amount"] for p in body["quote"]["parts"]] == [13050, 14150]
    assert "request" not in body["quote"]
    (started,) = fakes["alipay"].started
    assert (started.scene, started.amount) == (PayScene.qr, 27200)
    order = demo_db.scalars(select(Order)).one()
    assert order.meter.meter_no == "M100000011"
    # the selling kiosk is kept with the order
    assert order.quote["request"]["kiosk"].startswith("kiosk-")


def test_sell_by_account_and_meter_by_amount(
    client: FlaskClient, demo_db: Session, fakes: dict[str, QrFake], auth: dict[str, str]
) -> None:
    body = {
        "account_no": "10000002",
        "meter_no": "M100000022",
        "amount": 10000,
        "channel": "wechat",
    }
    response = post(client, auth, body)
    assert response.status_code == 201, response.json
    got = response.get_json()
    assert got["amount"] <= 10000 and got["volume"] > 0
    assert fakes["wechat"].started[0].scene is PayScene.qr


def test_token_required(client: FlaskClient, demo_db: Session, fakes: dict[str, QrFake]) -> None:
    body = {"card_no": "C100000011", "volume": 10000, "channel": "alipay"}
    assert client.post(ORDERS, json=body).status_code == 401
    bad = {"Authorization": "Bearer not-a-token"}
    assert client.post(ORDERS, json=body, headers=bad).status_code == 401
    assert client.get(f"{ORDERS}/20260101000000000001").status_code == 401
    assert orders(demo_db) == 0
    assert fakes["alipay"].started == []


def test_idempotency_key(
    client: FlaskClient, demo_db: Session, fakes: dict[str, QrFake], auth: dict[str, str]
) -> None:
    body = {"card_no": "C100000011", "volume": 10000, "channel": "alipay"}
    first = post(client, auth, body, "kiosk-tap-0001")
    again = post(client, auth, body, "kiosk-tap-0001")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json()["order_no"] == again.get_json()["order_no"]
    assert again.get_json()["qr_code"] == first.get_json()["qr_code"]
    assert orders(demo_db) == 1
    other = post(client, auth, {**body, "volume": 20000}, "kiosk-tap-0001")
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"
    assert orders(demo_db) == 1
    # another kiosk's same key is another order
    other_kiosk = {"Authorization": f"Bearer {kiosk_token(client, demo_db)}"}
    assert post(client, other_kiosk, body, "kiosk-tap-0001").status_code == 201
    assert orders(demo_db) == 2


def test_order_state_for_the_selling_kiosk_only(
    client: FlaskClient, demo_db: Session, fakes: dict[str, QrFake], auth: dict[str, str]
) -> None:
    body = {"card_no": "C100000031", "volume": 5000, "channel": "alipay"}
    order_no = post(client, auth, body).get_json()["order_no"]
    status = client.get(f"{ORDERS}/{order_no}", headers=auth)
    assert status.status_code == 200
    assert (status.get_json()["state"], status.get_json()["credit_state"]) == ("paying", None)
    # the provider's notify makes it paid; the kiosk sees it on its next poll
    amount = status.get_json()["amount"]
    notify = sign({"order_no": order_no, "trade_no": "T1", "status": "paid", "amount": amount})
    assert client.post("/payments/alipay/notify", data=notify).status_code == 200
    paid = client.get(f"{ORDERS}/{order_no}", headers=auth).get_json()
    assert (paid["state"], paid["credit_state"]) == ("paid", "awaiting_load")
    assert paid["quote"]["parts"]
    other_kiosk = {"Authorization": f"Bearer {kiosk_token(client, demo_db)}"}
    assert client.get(f"{ORDERS}/{order_no}", headers=other_kiosk).status_code == 404
    assert client.get(f"{ORDERS}/nope", headers=auth).status_code == 404


def test_refusals_change_nothing(
    client: FlaskClient, demo_db: Session, fakes: dict[str, QrFake], auth: dict[str, str]
) -> None:
    card = demo_db.scalars(select(Card).where(Card.card_no == "C100000041")).one()
    card.state = "lost"
    demo_db.commit()
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"card_no": "C100000041", "volume": 1000, "channel": "alipay"}, 403, "card_lost"),
        ({"card_no": "C999", "volume": 1000, "channel": "alipay"}, 404, "unknown_card"),
        ({"card_no": "C100000011", "volume": 1000, "channel": "paypal"}, 400, "malformed"),
        ({"card_no": "C100000011", "channel": "alipay"}, 400, "malformed"),
        ({"card_no": "C100000011", "volume": 1000, "channel": "wechat_v2"}, 503, ""),
        (
            {"card_no": "C100000011", "account_no": "1", "volume": 1000, "channel": "alipay"},
            400,
            "malformed",
        ),
        ({"card_no": "C100000011", "volume": 1000, "channel": "alipay", "x": 1}, 400, "malformed"),
    ]
    for body, status, code in cases:
        response = post(client, auth, body)
        assert response.status_code == status, (body, response.json)
        if code:
            assert response.get_json()["error"]["code"] == code
    assert orders(demo_db) == 0


def test_openapi_paths_name_the_routes(app: Flask) -> None:
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert "/kiosk/api/v1/orders" in rules
    assert "/kiosk/api/v1/orders/<order_no>" in rules
    assert set(KIOSK_ORDERS_OPENAPI_PATHS) == {
        "/kiosk/api/v1/orders",
        "/kiosk/api/v1/orders/{order_no}",
    }
    assert KIOSK_ORDERS_OPENAPI_PATHS["/kiosk/api/v1/orders"]["post"]["security"]
