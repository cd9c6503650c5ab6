"""POST /api/v1/orders with Idempotency-Key and GET /api/v1/orders/{order_no}."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import portal.api_orders  # noqa: F401  (adds the order routes to the API blueprint)
from models import demo
from models.orders import Order
from payments.base import PaymentError, PaymentRequest, PaymentStart
from portal.api_orders import ORDERS_OPENAPI_PATHS
from tests.fake_provider import FakeProvider, sign

BODY: dict[str, Any] = {
    "account_no": "10000001",
    "volume": 10000,
    "channel": "alipay",
    "scene": "wap",
}


@pytest.fixture
def demo_db(db: Session) -> Session:
    demo.load(db)
    return db


@pytest.fixture
def fakes(app: Flask) -> dict[str, FakeProvider]:
    registry = {"alipay": FakeProvider("alipay"), "wechat": FakeProvider("wechat")}
    app.extensions["ranqi_providers"] = registry
    return registry


def orders(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(Order)) or 0


def post(client: FlaskClient, body: Any, key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else {}
    return client.post("/api/v1/orders", json=body, headers=headers)


def test_create_order(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    response = post(client, BODY, "key-0001")
    assert response.status_code == 201
    body = response.get_json()
    order_no = body["order_no"]
    assert body["payment"] == {"redirect_url": f"https://fake.invalid/pay/{order_no}"}
    assert (body["state"], body["amount"], body["volume"], body["channel"]) == (
        "paying",
        27200,
        10000,
        "alipay",
    )
    assert [p["amount"] for p in body["quote"]["parts"]] == [13050, 14150]
    assert "request" not in body["quote"]
    assert body["paid_at"] is None and body["credit_state"] is None
    order = demo_db.scalars(select(Order)).one()
    assert (order.order_no, order.amount, order.idempotency_key) == (
        order_no,
        27200,
        "api-key-0001",
    )


def test_by_amount_on_a_named_meter(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    body = {"account_no": "10000002", "meter_no": "M100000022", "amount": 10000}
    response = post(client, {**body, "channel": "wechat", "scene": "h5"})
    assert response.status_code == 201
    assert response.get_json()["amount"] <= 10000
    assert demo_db.scalars(select(Order)).one().channel == "wechat"


def test_same_key_same_body_is_the_same_order(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    first = post(client, BODY, "same-key-1")
    again = post(client, BODY, "same-key-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.get_json()["order_no"] == again.get_json()["order_no"]
    assert again.get_json()["payment"]["redirect_url"].endswith(first.get_json()["order_no"])
    assert orders(demo_db) == 1
    # without a key, each request is an order of its own
    assert post(client, BODY).status_code == 201
    assert post(client, BODY).status_code == 201
    assert orders(demo_db) == 3


def test_same_key_after_payment_gives_the_paid_order(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    order_no = post(client, BODY, "paid-key-1").get_json()["order_no"]
    notice = sign({"order_no": order_no, "trade_no": "T-1", "status": "paid", "amount": 27200})
    assert client.post("/payments/alipay/notify", data=notice).data == b"success"
    # the household is now in tier 2: a fresh quote would differ, the key still finds it
    again = post(client, BODY, "paid-key-1")
    assert again.status_code == 200
    assert again.get_json()["state"] == "paid" and again.get_json()["payment"] is None
    assert orders(demo_db) == 1


@pytest.mark.parametrize(
    "change",
    [{"volume": 10001}, {"channel": "wechat", "scene": "h5"}, {"meter_no": "M100000011"}],
)
def test_same_key_different_body_is_409(
    client: FlaskClient,
    demo_db: Session,
    fakes: dict[str, FakeProvider],
    change: dict[str, Any],
) -> None:
    assert post(client, BODY, "reused-key").status_code == 201
    response = post(client, {**BODY, **change}, "reused-key")
    assert response.status_code == 409
    assert response.get_json()["error"]["code"] == "idempotency_key_reused"
    assert orders(demo_db) == 1


@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        {**BODY, "channel": "paypal"},
        {**BODY, "scene": "kiosk"},
        {**BODY, "scene": "h5"},  # Alipay has no H5 scene
        {**BODY, "channel": "wechat", "scene": "jsapi"},  # needs an openid
        {**BODY, "volume": "100"},
        {**BODY, "amount": 100},
        {**BODY, "extra": 1},
        {k: v for k, v in BODY.items() if k != "channel"},
    ],
)
def test_malformed_is_400(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider], body: Any
) -> None:
    response = post(client, body, "bad-body-1")
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "malformed"
    assert orders(demo_db) == 0


def test_bad_idempotency_key_is_400(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    assert post(client, BODY, "short").status_code == 400
    assert orders(demo_db) == 0


def test_unknown_account_or_meter_is_404(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    response = post(client, {**BODY, "account_no": "99999999"})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "account_not_found"
    response = post(client, {**BODY, "meter_no": "M999"})
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "meter_not_found"
    assert orders(demo_db) == 0


def test_refused_quote_is_422(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    response = post(client, {**BODY, "volume": 40000})
    assert response.status_code == 422
    assert response.get_json()["error"]["code"] == "above_maximum"
    assert orders(demo_db) == 0


def test_channel_without_provider_is_503(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    response = post(client, {**BODY, "channel": "wechat_v2", "scene": "h5"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "channel_unavailable"


def test_provider_failure_is_502_and_a_retry_pays(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    working = fakes["alipay"].create_payment

    def failing(request: PaymentRequest) -> PaymentStart:
        raise PaymentError("gateway down")

    fakes["alipay"].create_payment = failing  # type: ignore[method-assign]
    response = post(client, BODY, "retry-key-1")
    assert response.status_code == 502
    error = response.get_json()["error"]
    assert error["code"] == "provider_error"
    order = demo_db.scalars(select(Order)).one()
    assert error["detail"]["order_no"] == order.order_no and order.state == "created"
    fakes["alipay"].create_payment = working  # type: ignore[method-assign]
    retry = post(client, BODY, "retry-key-1")
    assert retry.status_code == 200
    assert retry.get_json()["payment"]["redirect_url"].endswith(order.order_no)
    assert orders(demo_db) == 1


def test_order_status(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    order_no = post(client, BODY).get_json()["order_no"]
    status = client.get(f"/api/v1/orders/{order_no}")
    assert status.status_code == 200
    body = status.get_json()
    assert set(body) == {
        "order_no",
        "state",
        "amount",
        "volume",
        "channel",
        "created_at",
        "expires_at",
        "paid_at",
        "credit_state",
    }
    assert (body["state"], body["paid_at"], body["credit_state"]) == ("paying", None, None)
    notice = sign({"order_no": order_no, "trade_no": "T-2", "status": "paid", "amount": 27200})
    assert client.post("/payments/alipay/notify", data=notice).data == b"success"
    body = client.get(f"/api/v1/orders/{order_no}").get_json()
    assert body["state"] == "paid" and body["credit_state"] == "awaiting_load"
    assert body["paid_at"].endswith("+00:00")
    missing = client.get("/api/v1/orders/20990101000000")
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "order_not_found"


def test_openapi_paths_cover_the_routes(app: Flask) -> None:
    routes = {
        (rule.rule, method.lower())
        for rule in app.url_map.iter_rules()
        if rule.endpoint in {"api.create_order_api", "api.get_order_api"}
        for method in rule.methods or ()
        if method not in {"HEAD", "OPTIONS"}
    }
    documented = {
        (path.replace("{order_no}", "<order_no>"), method)
        for path, item in ORDERS_OPENAPI_PATHS.items()
        for method in item
    }
    assert (
        routes
        == documented
        == {
            ("/api/v1/orders", "post"),
            ("/api/v1/orders/<order_no>", "get"),
        }
    )
    post_op = ORDERS_OPENAPI_PATHS["/api/v1/orders"]["post"]
    assert {"200", "201", "400", "404", "409", "422", "502"} <= set(post_op["responses"])


def test_responses_have_the_documented_fields(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    post_op = ORDERS_OPENAPI_PATHS["/api/v1/orders"]["post"]
    created_schema = post_op["responses"]["201"]["content"]["application/json"]["schema"]
    created = post(client, BODY).get_json()
    assert set(created) == set(created_schema["properties"]) == set(created_schema["required"])
    assert set(created["payment"]) <= set(created_schema["properties"]["payment"]["properties"])
    get_op = ORDERS_OPENAPI_PATHS["/api/v1/orders/{order_no}"]["get"]
    status_schema = get_op["responses"]["200"]["content"]["application/json"]["schema"]
    status = client.get(f"/api/v1/orders/{created['order_no']}").get_json()
    assert set(status) == set(status_schema["properties"]) == set(status_schema["required"])
    assert status["state"] in status_schema["properties"]["state"]["enum"]
