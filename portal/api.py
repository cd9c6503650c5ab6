"""The JSON API under /api/v1/ and its OpenAPI document (portal/openapi.py)."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response, jsonify, request

from models.base import utcnow
from models.errors import DomainError, NotFound, QuoteError
from models.quotes import find_meter, quote
from portal import db, openapi

bp = Blueprint("api", __name__, url_prefix="/api/v1")

QUOTE_FIELDS = frozenset({"account_no", "meter_no", "volume", "amount"})
#: the longest account or meter number the database holds
MAX_NUMBER_LENGTH = 32
#: an account or meter number: no control characters (PostgreSQL refuses NUL in text)
NUMBER = re.compile(openapi.NUMBER_PATTERN)


class Malformed(DomainError):
    """A request the API cannot read: answered 400 before the domain sees it."""

    code = "malformed"


def error_response(error: DomainError, status: int) -> tuple[Response, int]:
    """The one shape of every API error: ``{"error": {"code", "message"[, "detail"]}}``."""
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.detail:
        body["detail"] = error.detail
    return jsonify(error=body), status


def status_for(error: DomainError) -> int:
    """404 for what does not exist, 422 for a refused quote, 400 for the rest."""
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, QuoteError):
        return 422
    return 400


def _number(body: dict[str, Any], field: str, *, required: bool) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise Malformed(f"{field} is required")
        return None
    if not isinstance(value, str) or not NUMBER.fullmatch(value):
        raise Malformed(
            f"{field} must be a string of 1 to {MAX_NUMBER_LENGTH} characters, "
            "none of them control characters"
        )
    return value


def _positive_int(body: dict[str, Any], field: str, unit: str) -> int | None:
    if field not in body:
        return None
    value = body[field]
    # JSON true is a Python int; a resident's volume is never a boolean.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise Malformed(f"{field} must be a positive integer ({unit})")
    return value


def parse_quote_request(body: Any) -> tuple[str, str | None, int | None, int | None]:
    """Check a quote request's JSON; return account_no, meter_no, volume, amount."""
    if not isinstance(body, dict):
        raise Malformed("send a JSON object (Content-Type: application/json)")
    extra = sorted(set(body) - QUOTE_FIELDS)
    if extra:
        raise Malformed(f"unknown fields: {', '.join(extra)}")
    account_no = _number(body, "account_no", required=True)
    assert account_no is not None
    meter_no = _number(body, "meter_no", required=False)
    volume = _positive_int(body, "volume", "0.01 m³")
    amount = _positive_int(body, "amount", "fen")
    if (volume is None) == (amount is None):
        raise Malformed("give exactly one of volume (0.01 m³) and amount (fen)")
    return account_no, meter_no, volume, amount


def request_json() -> Any:
    """The request's JSON, or None when it is not JSON (or nests too deep to read)."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


@bp.post("/quotes")
def create_quote() -> tuple[Response, int] | Response:
    """Quote a purchase for a meter by volume or by amount; nothing is stored."""
    try:
        account_no, meter_no, volume, amount = parse_quote_request(request_json())
        session = db.session()
        meter = find_meter(session, account_no, meter_no)
        result = quote(session, meter=meter, volume=volume, amount=amount, at=utcnow())
    except DomainError as error:
        return error_response(error, status_for(error))
    return jsonify(result.as_dict())


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 document describing this API."""
    return jsonify(openapi.document())
