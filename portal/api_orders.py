"""Orders in the JSON API: POST /api/v1/orders (with Idempotency-Key), GET /api/v1/orders/{no}.

The routes join the API blueprint (``portal.api.bp``): import this module before the app
registers it. :data:`ORDERS_OPENAPI_PATHS` documents them for the OpenAPI document.
Creating an order quotes it afresh, stores it, and starts the payment at the provider;
the provider's notify, not this API, makes it paid.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from typing import Any

from flask import Response, current_app, jsonify, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.base import utcnow
from models.errors import DomainError, NotFound
from models.ordering import CHANNELS, create_order
from models.orders import Order
from models.quotes import find_meter, quote
from models.states import OrderState
from models.tariffs import Tariff
from payments.base import PaymentStart, PayScene
from portal import db
from portal.api import (
    Malformed,
    bp,
    error_response,
    parse_quote_request,
    request_json,
    status_for,
)
from portal.callbacks import providers
from portal.purchase import payment_request

log = logging.getLogger(__name__)

ORDER_FIELDS = frozenset({"account_no", "meter_no", "volume", "amount", "channel", "scene"})
#: what each channel can start: Alipay in a browser or by QR; WeChat Pay in WeChat, H5, QR
SCENES: dict[str, frozenset[PayScene]] = {
    "alipay": frozenset({PayScene.wap, PayScene.qr}),
    "wechat": frozenset({PayScene.jsapi, PayScene.h5, PayScene.qr}),
    "wechat_v2": frozenset({PayScene.jsapi, PayScene.h5, PayScene.qr}),
}
#: an Idempotency-Key: 8 to 80 visible ASCII characters
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{8,80}")
#: orders whose payment may still be started
PENDING = frozenset({OrderState.created.value, OrderState.paying.value})


class KeyReused(DomainError):
    """The same Idempotency-Key with a different request: answered 409."""

    code = "idempotency_key_reused"


class ProviderFailed(DomainError):
    """The provider could not start the payment: answered 502, the order stays created."""

    code = "provider_error"


def parse_order_request(body: Any) -> dict[str, Any]:
    """Check an order request's JSON; the fields as the API understands them."""
    if not isinstance(body, dict):
        raise Malformed("send a JSON object (Content-Type: application/json)")
    extra = sorted(set(body) - ORDER_FIELDS)
    if extra:
        raise Malformed(f"unknown fields: {', '.join(extra)}")
    quote_part = {k: v for k, v in body.items() if k not in {"channel", "scene"}}
    account_no, meter_no, volume, amount = parse_quote_request(quote_part)
    channel = body.get("channel")
    if channel not in CHANNELS:
        raise Malformed(f"channel must be one of {', '.join(CHANNELS)}")
    try:
        scene = PayScene(str(body.get("scene")))
    except ValueError:
        raise Malformed(f"scene must be one of {', '.join(s.value for s in PayScene)}") from None
    if scene not in SCENES[channel]:
        raise Malformed(f"{channel} cannot start a payment in scene {scene.value}")
    if scene is PayScene.jsapi:
        raise Malformed("scene jsapi needs the payer's openid, which this API does not take yet")
    if channel not in providers():
        raise DomainError(f"channel {channel} is not available", code="channel_unavailable")
    return {
        "account_no": account_no,
        "meter_no": meter_no,
        "volume": volume,
        "amount": amount,
        "channel": channel,
        "scene": scene.value,
    }


def _idempotency_key() -> str | None:
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(raw):
        raise Malformed("Idempotency-Key must be 8 to 80 visible ASCII characters")
    return f"api-{raw}"


def _same_request(order: Order, asked: dict[str, Any]) -> bool:
    """Whether a stored order was made by this very request (the fields as first sent)."""
    stored = order.quote.get("request") if isinstance(order.quote, dict) else None
    return stored == asked


def order_json(order: Order) -> dict[str, Any]:
    """An order as the API shows it."""
    stored = dict(order.quote) if isinstance(order.quote, dict) else {}
    stored.pop("request", None)
    return {
        "order_no": order.order_no,
        "state": order.state,
        "amount": order.amount,
        "volume": order.volume,
        "channel": order.channel,
        "quote": stored,
        "created_at": _iso(order.created_at),
        "expires_at": _iso(order.expires_at),
        "paid_at": _iso(order.paid_at),
        "credit_state": order.credit.state if order.credit is not None else None,
    }


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat() if moment is not None else None


def _payment_json(start: PaymentStart) -> dict[str, Any]:
    if start.redirect_url:
        return {"redirect_url": start.redirect_url}
    if start.qr_code:
        return {"qr_code": start.qr_code}
    if start.jsapi_params:
        return {"jsapi_params": start.jsapi_params}
    raise ProviderFailed("the provider gave nothing to start paying with")


def _start(order: Order, scene: PayScene) -> PaymentStart:
    """Start paying at the order's provider; :class:`ProviderFailed` if it cannot."""
    payment = payment_request(order, scene)
    try:
        return providers()[order.channel].create_payment(payment)
    except Exception as error:  # any adapter failure: the order stays, the expiry job closes it
        log.exception("%s could not start paying %s", order.channel, order.order_no)
        raise ProviderFailed(
            f"{order.channel} could not start the payment; retry with the same Idempotency-Key",
            order_no=order.order_no,
        ) from error


def _existing(key: str) -> Order | None:
    return db.session().scalar(select(Order).where(Order.idempotency_key == key))


def place_order(session: Session, asked: dict[str, Any], key: str | None) -> tuple[Order, int]:
    """The order for a request: for a repeated Idempotency-Key the one it made (200), else
    quoted afresh, created and committed (201). :class:`KeyReused` if the key made another.
    """
    order = _existing(key) if key else None
    if order is not None:
        if not _same_request(order, asked):
            raise KeyReused("this Idempotency-Key was used for a different order")
        return order, 200
    meter = find_meter(session, asked["account_no"], asked["meter_no"])
    fresh = quote(session, meter=meter, volume=asked["volume"], amount=asked["amount"], at=utcnow())
    tariff_id = session.scalar(select(Tariff.id).where(Tariff.code == fresh.tariff_code))
    if tariff_id is None:  # pragma: no cover - the quote came from this tariff
        raise NotFound(f"no tariff {fresh.tariff_code}", code="no_tariff")
    try:
        order = create_order(
            session,
            meter=meter,
            tariff_id=tariff_id,
            volume=fresh.volume,
            amount=fresh.amount,
            quote={**fresh.as_dict(), "request": asked},
            channel=asked["channel"],
            now=utcnow(),
            ttl=dt.timedelta(seconds=int(current_app.config.get("ORDER_TTL_SECONDS", 900))),
            idempotency_key=key,
        )
        session.commit()
        return order, 201
    except IntegrityError:  # the same key, sent twice at once: the other one won
        session.rollback()
        order = _existing(key) if key else None
        if order is None:
            raise
        if not _same_request(order, asked):
            raise KeyReused("this Idempotency-Key was used for a different order") from None
        return order, 200


def begin_paying(session: Session, order: Order, scene: PayScene) -> PaymentStart | None:
    """Start paying an unpaid order at its provider (created → paying); None once settled."""
    if order.state not in PENDING:
        return None
    start = _start(order, scene)
    if order.state == OrderState.created.value:
        order.transition_to(OrderState.paying)
        session.commit()
    return start


@bp.post("/orders")
def create_order_api() -> tuple[Response, int]:
    """Quote afresh, create the order, start paying: 201; the same Idempotency-Key again: 200."""
    session = db.session()
    try:
        asked = parse_order_request(request_json())
        order, status = place_order(session, asked, _idempotency_key())
        start = begin_paying(session, order, PayScene(asked["scene"]))
        body = order_json(order)
        body["payment"] = _payment_json(start) if start is not None else None
    except KeyReused as error:
        return error_response(error, 409)
    except ProviderFailed as error:
        return error_response(error, 502)
    except DomainError as error:
        statuses = {"channel_unavailable": 503, "idempotency_key_reused": 409}
        return error_response(error, statuses.get(error.code) or status_for(error))
    return jsonify(body), status


@bp.get("/orders/<order_no>")
def get_order_api(order_no: str) -> tuple[Response, int]:
    """An order's state: paid yet, and where its gas is."""
    order = (
        db.session().scalar(select(Order).where(Order.order_no == order_no))
        if len(order_no) <= 32
        else None
    )
    if order is None:
        return error_response(NotFound(f"no order {order_no}", code="order_not_found"), 404)
    body = order_json(order)
    body.pop("quote")
    return jsonify(body), 200


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_STATE = {"type": "string", "enum": [s.value for s in OrderState]}
_CREDIT_STATE = {
    "type": ["string", "null"],
    "enum": ["awaiting_load", "loaded", "applied", "refunded", None],
    "description": "Where the paid gas is: null before payment",
}
_ORDER_STATUS_PROPERTIES: dict[str, Any] = {
    "order_no": {"type": "string"},
    "state": _STATE,
    "amount": {"type": "integer", "minimum": 1, "description": "Fen (0.01 yuan)"},
    "volume": {"type": "integer", "minimum": 1, "description": "Hundredths of a m³"},
    "channel": {"type": "string", "enum": list(CHANNELS)},
    "created_at": {"type": "string", "format": "date-time"},
    "expires_at": _TIME,
    "paid_at": _TIME,
    "credit_state": _CREDIT_STATE,
}
_ORDER_STATUS: dict[str, Any] = {
    "type": "object",
    "properties": _ORDER_STATUS_PROPERTIES,
    "required": list(_ORDER_STATUS_PROPERTIES),
    "additionalProperties": False,
}
_ORDER_CREATED: dict[str, Any] = {
    "type": "object",
    "properties": {
        **_ORDER_STATUS_PROPERTIES,
        "quote": {"$ref": "#/components/schemas/Quote"},
        "payment": {
            "type": ["object", "null"],
            "description": (
                "How the payer starts paying: exactly one field; null when the order "
                "is no longer waiting for payment (a repeated request)"
            ),
            "properties": {
                "redirect_url": {"type": "string", "description": "Alipay WAP / WeChat H5"},
                "qr_code": {"type": "string", "description": "Content of a QR code to show"},
                "jsapi_params": {"type": "object", "additionalProperties": {"type": "string"}},
            },
            "additionalProperties": False,
        },
    },
    "required": [*_ORDER_STATUS_PROPERTIES, "quote", "payment"],
    "additionalProperties": False,
}

#: The OpenAPI 3.1 path items of the order routes, to merge into the document's "paths".
ORDERS_OPENAPI_PATHS: dict[str, Any] = {
    "/api/v1/orders": {
        "post": {
            "operationId": "createOrder",
            "summary": "Order gas for a meter and start paying",
            "description": (
                "Quotes the purchase afresh (as POST /api/v1/quotes), stores the order with "
                "its quote and starts the payment at the channel's provider. The provider's "
                "notify makes the order paid; poll GET /api/v1/orders/{order_no}. Send an "
                "Idempotency-Key: the same key with the same body returns the same order "
                "(200), with a different body 409. An order not paid in time is closed."
            ),
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{8,80}$"},
                    "description": "A client-chosen key that makes retrying safe",
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "description": "Exactly one of `volume` and `amount`.",
                            "properties": {
                                "account_no": {"type": "string", "minLength": 1, "maxLength": 32},
                                "meter_no": {
                                    "type": ["string", "null"],
                                    "minLength": 1,
                                    "maxLength": 32,
                                    "description": "May be left out if the account has one meter",
                                },
                                "volume": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "description": "Hundredths of a m³",
                                },
                                "amount": {
                                    "type": "integer",
                                    "minimum": 1,
                                    "description": "Fen; buys the largest volume within it",
                                },
                                "channel": {"type": "string", "enum": list(CHANNELS)},
                                "scene": {
                                    "type": "string",
                                    "enum": ["wap", "h5", "qr"],
                                    "description": (
                                        "alipay: wap or qr; wechat, wechat_v2: h5 or qr "
                                        "(jsapi needs an openid, not taken yet)"
                                    ),
                                },
                            },
                            "required": ["account_no", "channel", "scene"],
                            "oneOf": [{"required": ["volume"]}, {"required": ["amount"]}],
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": {
                "201": {
                    "description": "The order, created, and how to pay",
                    "content": {"application/json": {"schema": _ORDER_CREATED}},
                },
                "200": {
                    "description": "The order this Idempotency-Key made before",
                    "content": {"application/json": {"schema": _ORDER_CREATED}},
                },
                "400": {"description": "A request the API cannot read", "content": _ERROR},
                "404": {"description": "Unknown account or meter", "content": _ERROR},
                "409": {
                    "description": "The Idempotency-Key was used for a different order",
                    "content": _ERROR,
                },
                "422": {"description": "The quote was refused (see its code)", "content": _ERROR},
                "502": {
                    "description": (
                        "The provider could not start the payment; the order exists "
                        "(detail.order_no): retry with the same Idempotency-Key"
                    ),
                    "content": _ERROR,
                },
                "503": {"description": "The channel is not available", "content": _ERROR},
            },
        }
    },
    "/api/v1/orders/{order_no}": {
        "get": {
            "operationId": "getOrder",
            "summary": "An order's state and where its gas is",
            "parameters": [
                {"name": "order_no", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": "The order",
                    "content": {"application/json": {"schema": _ORDER_STATUS}},
                },
                "404": {"description": "No such order", "content": _ERROR},
            },
        }
    },
}
