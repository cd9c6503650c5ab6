"""Walk-up purchase at a kiosk: ``POST /kiosk/api/v1/orders`` and ``GET .../orders/{order_no}``.

The routes join the kiosk blueprint (``portal.kiosk_api.bp``): import this module before
the app registers it. A kiosk sells gas for the card just tapped: it names the card (or
the account and meter the card carries), a volume or an amount and a channel; the server
quotes afresh, stores the order and starts the provider's QR scene (Alipay precreate,
WeChat Pay Native). The kiosk shows the QR code and polls the order; the provider's
notify, never the kiosk, makes it paid. The same steps as the residents' order API
(``portal.api_orders``), called, not copied.

Which kiosk sold an order is kept in the order's stored request (``quote["request"]
["kiosk"]``): orders have no kiosk column yet and this needs no migration.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from authlib.integrations.flask_oauth2 import current_token
from flask import Response, jsonify, request
from sqlalchemy import select

from models.accounts import Card
from models.errors import DomainError, NotFound
from models.ordering import CHANNELS
from models.orders import Order
from models.states import CardState, OrderState
from payments.base import PaymentStart, PayScene
from portal import db, openapi
from portal.api import Malformed, error_response, parse_quote_request, request_json, status_for
from portal.api_orders import (
    IDEMPOTENCY_KEY,
    KeyReused,
    ProviderFailed,
    begin_paying,
    order_json,
    place_order,
)
from portal.callbacks import providers
from portal.kiosk_api import bp
from portal.kiosk_auth import SCOPE, require_kiosk

log = logging.getLogger(__name__)

KIOSK_ORDER_FIELDS = frozenset({"card_no", "account_no", "meter_no", "volume", "amount", "channel"})
#: the card states a kiosk may sell gas for
_SELLABLE = CardState.active.value
_CARD_REFUSALS = {
    "lost": "card_lost",
    "replaced": "card_replaced",
    "blacklisted": "card_blacklisted",
}


def _kiosk_client_id() -> str:
    client_id: str = current_token.row.kiosk.client_id
    return client_id


def parse_kiosk_order(body: Any) -> dict[str, Any]:
    """Check a kiosk's order request; the fields as stored (card resolved to account and meter)."""
    if not isinstance(body, dict):
        raise Malformed("send a JSON object (Content-Type: application/json)")
    extra = sorted(set(body) - KIOSK_ORDER_FIELDS)
    if extra:
        raise Malformed(f"unknown fields: {', '.join(extra)}")
    quote_part = {k: v for k, v in body.items() if k not in {"card_no", "channel"}}
    card_no = body.get("card_no")
    if card_no is not None:
        if "account_no" in body or "meter_no" in body:
            raise Malformed("give card_no, or account_no and meter_no, not both")
        if not isinstance(card_no, str) or not 1 <= len(card_no) <= 32:
            raise Malformed("card_no must be the card number the card carries")
        card = db.session().scalar(select(Card).where(Card.card_no == card_no))
        if card is None:
            raise NotFound(f"no card {card_no}", code="unknown_card")
        if card.state != _SELLABLE:
            raise DomainError(
                f"card {card_no} is {card.state}",
                code=_CARD_REFUSALS.get(card.state, "card_refused"),
            )
        quote_part["account_no"] = card.meter.account.account_no
        quote_part["meter_no"] = card.meter.meter_no
    account_no, meter_no, volume, amount = parse_quote_request(quote_part)
    channel = body.get("channel")
    if channel not in CHANNELS:
        raise Malformed(f"channel must be one of {', '.join(CHANNELS)}")
    if channel not in providers():
        raise DomainError(f"channel {channel} is not available", code="channel_unavailable")
    return {
        "account_no": account_no,
        "meter_no": meter_no,
        "volume": volume,
        "amount": amount,
        "channel": channel,
        "scene": PayScene.qr.value,
        "kiosk": _kiosk_client_id(),
    }


def _idempotency_key(client_id: str) -> str | None:
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    if not IDEMPOTENCY_KEY.fullmatch(raw):
        raise Malformed("Idempotency-Key must be 8 to 80 visible ASCII characters")
    # per kiosk, hashed: two kiosks choosing the same key never share an order, and the
    # stored key stays within the column's 80 characters
    digest = hashlib.sha256(f"{client_id}\n{raw}".encode()).hexdigest()
    return f"kiosk-{digest}"


def _stored_request(order: Order) -> dict[str, Any] | None:
    stored = order.quote.get("request") if isinstance(order.quote, dict) else None
    return stored if isinstance(stored, dict) else None


def _qr_code(start: PaymentStart | None, order: Order) -> str | None:
    """The content of the QR code to show for an unpaid order (None once it is settled)."""
    if start is None:
        return None
    if not start.qr_code:
        raise ProviderFailed(
            f"{order.channel} gave no QR code for {order.order_no}", order_no=order.order_no
        )
    code: str = start.qr_code
    return code


@bp.post("/orders")
@require_kiosk(SCOPE)
def create_kiosk_order() -> tuple[Response, int]:
    """Sell gas at the kiosk: quote afresh, create the order, start the QR payment (201)."""
    session = db.session()
    try:
        client_id = _kiosk_client_id()
        asked = parse_kiosk_order(request_json())
        order, status = place_order(session, asked, _idempotency_key(client_id))
        body = order_json(order)
        body["qr_code"] = _qr_code(begin_paying(session, order, PayScene.qr), order)
        body["state"] = order.state
    except KeyReused as error:
        return error_response(error, 409)
    except ProviderFailed as error:
        return error_response(error, 502)
    except DomainError as error:
        statuses = {
            "channel_unavailable": 503,
            "card_lost": 403,
            "card_replaced": 403,
            "card_blacklisted": 403,
            "card_refused": 403,
        }
        return error_response(error, statuses.get(error.code) or status_for(error))
    return jsonify(body), status


@bp.get("/orders/<order_no>")
@require_kiosk(SCOPE)
def get_kiosk_order(order_no: str) -> tuple[Response, int]:
    """An order this kiosk sold: paid yet, and where its gas is (another kiosk's: 404)."""
    order = (
        db.session().scalar(select(Order).where(Order.order_no == order_no))
        if len(order_no) <= 32
        else None
    )
    stored = _stored_request(order) if order is not None else None
    if order is None or stored is None or stored.get("kiosk") != _kiosk_client_id():
        return error_response(NotFound(f"no order {order_no}", code="order_not_found"), 404)
    body = order_json(order)
    return jsonify(body), 200


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_SECURITY = [{"kioskOAuth": [SCOPE]}]
_ORDER = {
    "type": "object",
    "description": (
        "The order as GET /api/v1/orders/{order_no} shows it, with its quote (tier parts); "
        "POST adds qr_code"
    ),
    "properties": {
        "order_no": {"type": "string"},
        "state": {"type": "string", "enum": [s.value for s in OrderState]},
        "amount": {"type": "integer", "minimum": 1, "description": "Fen"},
        "volume": {"type": "integer", "minimum": 1, "description": "Hundredths of a m³"},
        "channel": {"type": "string", "enum": list(CHANNELS)},
        "quote": {"$ref": "#/components/schemas/Quote"},
        "created_at": {"type": "string", "format": "date-time"},
        "expires_at": {"type": ["string", "null"], "format": "date-time"},
        "paid_at": {"type": ["string", "null"], "format": "date-time"},
        "credit_state": {"type": ["string", "null"]},
        "qr_code": {
            "type": ["string", "null"],
            "description": "Content of the QR code to show; null once no longer payable",
        },
    },
}

#: The OpenAPI 3.1 path items of the kiosk order routes, to merge into the document.
KIOSK_ORDERS_OPENAPI_PATHS: dict[str, Any] = {
    "/kiosk/api/v1/orders": {
        "post": {
            "operationId": "createKioskOrder",
            "summary": "Sell gas at a kiosk for the tapped card; pay by QR code",
            "description": (
                "Quotes afresh, stores the order (the selling kiosk is kept with it) and starts "
                "the channel's QR scene (Alipay precreate, WeChat Pay Native). Poll GET "
                "/kiosk/api/v1/orders/{order_no}; the provider's notify makes it paid, then the "
                "resident taps the card to load it. The same Idempotency-Key with the same body "
                "returns the same order (200), with another body 409."
            ),
            "security": _SECURITY,
            "parameters": [
                {
                    "name": "Idempotency-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "pattern": r"^[\x21-\x7e]{8,80}$"},
                }
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "description": (
                                "card_no, or account_no (and meter_no); exactly one of volume "
                                "and amount"
                            ),
                            "properties": {
                                "card_no": {"type": "string", "maxLength": 32},
                                "account_no": {"type": "string", "maxLength": 32},
                                "meter_no": {"type": ["string", "null"], "maxLength": 32},
                                "volume": {"type": "integer", "minimum": 1},
                                "amount": {"type": "integer", "minimum": 1},
                                "channel": {"type": "string", "enum": list(CHANNELS)},
                            },
                            "required": ["channel"],
                            "additionalProperties": False,
                        }
                    }
                },
            },
            "responses": {
                "201": {
                    "description": "Created; show qr_code",
                    "content": {"application/json": {"schema": _ORDER}},
                },
                "200": {
                    "description": "The order this Idempotency-Key made before",
                    "content": {"application/json": {"schema": _ORDER}},
                },
                "400": {"description": "A request the API cannot read", "content": _ERROR},
                "401": {"description": "No, expired or revoked token"},
                "403": {
                    "description": "The card is lost, replaced or blacklisted",
                    "content": _ERROR,
                },
                "404": {"description": "Unknown card, account or meter", "content": _ERROR},
                "409": {
                    "description": "Idempotency-Key reused for another order",
                    "content": _ERROR,
                },
                "422": {"description": "The quote was refused", "content": _ERROR},
                "502": {"description": "The provider could not start paying", "content": _ERROR},
                "503": {"description": "The channel is not available", "content": _ERROR},
            },
        }
    },
    "/kiosk/api/v1/orders/{order_no}": {
        "get": {
            "operationId": "getKioskOrder",
            "summary": "An order this kiosk sold: its state and where its gas is",
            "security": _SECURITY,
            "parameters": [
                {"name": "order_no", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": {
                    "description": "The order",
                    "content": {"application/json": {"schema": _ORDER}},
                },
                "401": {"description": "No, expired or revoked token"},
                "404": {"description": "No such order sold by this kiosk", "content": _ERROR},
            },
        }
    },
}

# The routes above join the kiosk blueprint when this module is imported; document them
# at the same moment, so that no app ever serves them undocumented (create_app's own
# extend() with the same paths is harmless: extend is idempotent).
openapi.extend(paths=KIOSK_ORDERS_OPENAPI_PATHS)
