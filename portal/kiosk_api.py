"""The kiosk API under /kiosk/api/v1/: token endpoint, who am I, and loading cards.

``POST /sync`` sends the image a kiosk read from a card; the answer is a write to
make (target image, page plan, the tag's password) or the card's state for the
screen. ``POST /confirm`` sends the read-back after the write. Each request is one
transaction, committed here; the domain (``models.cardwrites``) only flushes.
The JSON and error codes are described in docs/kiosk-api.md and
:data:`KIOSK_OPENAPI_PATHS`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
from collections.abc import Callable
from typing import Any

from authlib.integrations.flask_oauth2 import current_token
from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from cardfmt import IMAGE_SIZE
from models import cardwrites
from models.base import utcnow
from models.cardwrites import CardBusy, ConfirmResult, SyncResult
from models.errors import DomainError
from portal import db
from portal.card_keys import CardKeyError, card_keys
from portal.kiosk_auth import SCOPE, authorization, require_kiosk

bp = Blueprint("kiosk_api", __name__, url_prefix="/kiosk/api/v1")

#: seconds another kiosk's outstanding write counts as in progress (a tap elsewhere is "busy")
DEFAULT_WRITE_HOLD_SECONDS = 30

#: error code → HTTP status; every error body is {"error": {"code", "message"[, "detail"]}}
ERROR_STATUS: dict[str, int] = {
    "bad_request": 400,
    "bad_image_encoding": 400,
    "card_unreadable": 422,
    "card_refused": 422,
    "card_mismatch": 422,
    "tag_uid_mismatch": 422,
    "card_lost": 403,
    "card_replaced": 403,
    "card_blacklisted": 403,
    "unknown_card": 404,
    "unknown_write": 404,
    "card_busy": 409,
    "card_out_of_sync": 409,
    "card_state_unknown": 409,
    "readback_mismatch": 409,
    "write_abandoned": 409,
    "card_keys_unavailable": 503,
}

_UID = re.compile(r"^(?:[0-9a-fA-F]{2}){4,10}$")
_WRITE_ID = re.compile(r"^[0-9A-Za-z_-]{1,40}$")
#: PostgreSQL: serialization failure, deadlock, lock not available
_BUSY_SQLSTATES = {"40001", "40P01", "55P03"}


@bp.post("/token")
def issue_token() -> Response:
    """OAuth2 token endpoint (grant_type=client_credentials, HTTP Basic client auth)."""
    response: Response = authorization.create_token_response()
    return response


@bp.get("/kiosk")
@require_kiosk(SCOPE)
def whoami() -> dict[str, Any]:
    """The calling kiosk as the server knows it (its name and place, for its screen)."""
    kiosk = current_token.row.kiosk
    return {
        "client_id": kiosk.client_id,
        "name": kiosk.name,
        "location": kiosk.location,
        "opening_hours": kiosk.opening_hours,
    }


@bp.post("/sync")
@require_kiosk(SCOPE)
def sync() -> tuple[Response, int]:
    """A kiosk read a card: record its report, settle its last write, issue a write if due."""
    kiosk_id: int = current_token.row.kiosk_id
    try:
        body = _json_object()
        card_uid = body.get("card_uid")
        if not isinstance(card_uid, str) or not _UID.match(card_uid):
            raise DomainError(
                "card_uid must be the tag's UID in hex (4 to 10 bytes)", code="bad_request"
            )
        raw = _image(body)
        keys = _keys()
    except DomainError as error:
        return _error(error)
    hold = dt.timedelta(
        seconds=float(
            current_app.config.get("KIOSK_WRITE_HOLD_SECONDS", DEFAULT_WRITE_HOLD_SECONDS)
        )
    )
    return _in_transaction(
        lambda session: _sync_body(
            cardwrites.sync_card(
                session,
                raw=raw,
                tag_uid=card_uid,
                kiosk_id=kiosk_id,
                keys=keys,
                now=utcnow(),
                hold=hold,
            )
        )
    )


@bp.post("/confirm")
@require_kiosk(SCOPE)
def confirm() -> tuple[Response, int]:
    """A kiosk read the card back after writing: equal to the target, the gas is loaded."""
    kiosk_id: int = current_token.row.kiosk_id
    try:
        body = _json_object()
        write_id = body.get("write_id")
        if not isinstance(write_id, str) or not _WRITE_ID.match(write_id):
            raise DomainError("write_id must be the id /sync answered", code="bad_request")
        raw = _image(body)
    except DomainError as error:
        return _error(error)
    return _in_transaction(
        lambda session: _confirm_body(
            cardwrites.confirm_write(
                session, write_id=write_id, raw=raw, kiosk_id=kiosk_id, now=utcnow()
            )
        )
    )


def _in_transaction(work: Callable[[Session], dict[str, Any]]) -> tuple[Response, int]:
    """Run ``work(session)`` as this request's one transaction; domain refusals change nothing."""
    session = db.session()
    # End the read transaction authentication opened: the card lock must be the
    # transaction's first statement (SQLite cannot upgrade an older snapshot to a writer).
    session.commit()
    try:
        answer = work(session)
        session.commit()
    except DomainError as error:
        session.rollback()
        return _error(error)
    except IntegrityError:
        # the unique "one issued write per card" index: another kiosk got there first
        session.rollback()
        return _error(CardBusy("another kiosk is writing this card; try again in a moment"))
    except OperationalError as error:
        session.rollback()
        if not _is_lock_conflict(error):
            raise
        return _error(CardBusy("the card is being written elsewhere; try again in a moment"))
    return jsonify(answer), 200


def _is_lock_conflict(error: OperationalError) -> bool:
    sqlstate = getattr(error.orig, "sqlstate", None)
    return sqlstate in _BUSY_SQLSTATES or "database is locked" in str(error.orig)


def _json_object() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise DomainError("the request body must be a JSON object", code="bad_request")
    return body


def _image(body: dict[str, Any]) -> bytes:
    value = body.get("image")
    if not isinstance(value, str):
        raise DomainError("image must be the card's user memory in base64", code="bad_request")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DomainError("image is not valid base64", code="bad_image_encoding") from None
    if len(raw) != IMAGE_SIZE:
        raise DomainError(
            f"image is {len(raw)} bytes, not {IMAGE_SIZE}",
            code="card_unreadable",
            reason="wrong_length",
        )
    return raw


def _keys() -> cardwrites.CardKeys:
    try:
        return card_keys()
    except CardKeyError as error:
        current_app.logger.error("card keys unavailable: %s", error)
        raise DomainError(
            "the server cannot load cards right now", code="card_keys_unavailable"
        ) from None


def _error(error: DomainError) -> tuple[Response, int]:
    body: dict[str, Any] = {"code": error.code, "message": error.message}
    if error.detail:
        body["detail"] = error.detail
    response = jsonify(error=body)
    if isinstance(error, CardBusy):
        response.headers["Retry-After"] = str(error.detail.get("retry_after", 2))
    return response, ERROR_STATUS.get(error.code, 422)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sync_body(result: SyncResult) -> dict[str, Any]:
    card, meter = result.card, result.card.meter
    write = result.write
    return {
        "status": "write" if write is not None else "up_to_date",
        "write_id": write.write_id if write is not None else None,
        "image": _b64(write.target_image) if write is not None else None,
        "plan": [[page, data.hex()] for page, data in result.plan],
        "tag_password": result.tag_password.hex() if result.tag_password is not None else None,
        "loading": result.loading,
        "target": (
            {"purchase_count": write.purchase_count, "pending_volume": write.pending_volume}
            if write is not None
            else None
        ),
        "account_no": meter.account.account_no,
        "meter_no": meter.meter_no,
        "card_no": card.card_no,
        "card": {
            "purchase_count": card.purchase_count,
            "pending_volume": card.pending_volume,
            # the meter has taken what the card holds (or it holds nothing)
            "pending_applied": card.pending_volume == 0
            or meter.applied_count >= card.purchase_count,
        },
        "meter": {
            "applied_count": meter.applied_count,
            "remaining": meter.last_remaining,
            "reported_at": meter.last_report_at.isoformat() if meter.last_report_at else None,
        },
        "completed_write_id": result.completed.write_id if result.completed else None,
        "abandoned_write_id": result.abandoned.write_id if result.abandoned else None,
        "applied_volume": sum(credit.volume for credit in result.applied),
        "alarms_opened": [case.kind for case in result.cases],
    }


def _confirm_body(result: ConfirmResult) -> dict[str, Any]:
    # the same body for a repeated confirm: the kiosk cannot tell, and need not
    write = result.write
    meter = write.card.meter
    return {
        "status": "confirmed",
        "write_id": write.write_id,
        "loaded": sum(credit.volume for credit in write.credits),
        "purchase_count": write.purchase_count,
        "pending_volume": write.pending_volume,
        "confirmed_at": write.confirmed_at.isoformat() if write.confirmed_at else None,
        "account_no": meter.account.account_no,
        "meter_no": meter.meter_no,
        "card_no": write.card.card_no,
    }


def _error_responses(*codes: str) -> dict[str, Any]:
    """OpenAPI responses for the listed error codes, grouped by status."""
    by_status: dict[int, list[str]] = {}
    for code in codes:
        by_status.setdefault(ERROR_STATUS[code], []).append(code)
    return {
        str(status): {
            "description": "Refused; nothing changed. Codes: " + ", ".join(names),
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
        }
        for status, names in sorted(by_status.items())
    }


_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": sorted(ERROR_STATUS)},
                "message": {"type": "string"},
                "detail": {"type": "object"},
            },
        }
    },
}
_IMAGE = {
    "type": "string",
    "contentEncoding": "base64",
    "description": f"The card's user memory, pages 4.., exactly {IMAGE_SIZE} bytes, base64.",
}
_VOLUME = {"type": "integer", "minimum": 0, "description": "Gas in 0.01 m³."}
_NULLABLE_VOLUME = {"type": ["integer", "null"], "minimum": 0}
_SECURITY = [{"kioskOAuth": [SCOPE]}]
_UNAUTHORIZED = {"401": {"description": "No, expired or revoked token (OAuth2 error body)."}}

#: The OAuth2 scheme the kiosk paths use, for components.securitySchemes.
KIOSK_OPENAPI_SECURITY_SCHEMES: dict[str, Any] = {
    "kioskOAuth": {
        "type": "oauth2",
        "description": "Kiosks are confidential clients (client credentials, HTTP Basic).",
        "flows": {
            "clientCredentials": {"tokenUrl": "/kiosk/api/v1/token", "scopes": {SCOPE: "kiosk"}}
        },
    }
}

#: OpenAPI 3.1 paths of the kiosk API, for the lead to merge into /api/v1/openapi.json
#: (with :data:`KIOSK_OPENAPI_SECURITY_SCHEMES` under components.securitySchemes).
KIOSK_OPENAPI_PATHS: dict[str, Any] = {
    "/kiosk/api/v1/token": {
        "post": {
            "operationId": "kioskToken",
            "summary": "OAuth2 token for a kiosk (client credentials)",
            "description": "HTTP Basic with the kiosk's client_id and secret; tokens last minutes.",
            "requestBody": {
                "required": True,
                "content": {
                    "application/x-www-form-urlencoded": {
                        "schema": {
                            "type": "object",
                            "required": ["grant_type"],
                            "properties": {
                                "grant_type": {"const": "client_credentials"},
                                "scope": {"type": "string"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "A bearer token",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["access_token", "token_type", "expires_in"],
                                "properties": {
                                    "access_token": {"type": "string"},
                                    "token_type": {"const": "Bearer"},
                                    "expires_in": {"type": "integer"},
                                    "scope": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "400": {"description": "Bad grant (OAuth2 error body)."},
                "401": {"description": "Unknown client, wrong secret or disabled kiosk."},
            },
        }
    },
    "/kiosk/api/v1/kiosk": {
        "get": {
            "operationId": "kioskWhoAmI",
            "summary": "The calling kiosk: name and place, for its screen",
            "security": _SECURITY,
            "responses": {
                "200": {
                    "description": "The kiosk",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "client_id": {"type": "string"},
                                    "name": {"type": "string"},
                                    "location": {"type": "string"},
                                    "opening_hours": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                **_UNAUTHORIZED,
            },
        }
    },
    "/kiosk/api/v1/sync": {
        "post": {
            "operationId": "kioskSync",
            "summary": "Send the image read from a card; get a write to make, or the card's state",
            "description": (
                "Verifies the image, records the meter report it carries (credits the meter "
                "took become applied; alarms open safety cases), settles the card's "
                "outstanding write (a card showing its target completes it; a card showing "
                "the state it was built on abandons it), and issues a write when paid credits "
                "await. One outstanding write per card: another kiosk gets 409 card_busy."
            ),
            "security": _SECURITY,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["card_uid", "image"],
                            "properties": {
                                "card_uid": {
                                    "type": "string",
                                    "pattern": _UID.pattern,
                                    "description": "The tag's UID in hex.",
                                },
                                "image": _IMAGE,
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "A write to make (status write) or nothing to load (up_to_date)",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["status", "write_id", "card_no", "meter_no"],
                                "properties": {
                                    "status": {"enum": ["write", "up_to_date"]},
                                    "write_id": {"type": ["string", "null"]},
                                    "image": {**_IMAGE, "type": ["string", "null"]},
                                    "plan": {
                                        "type": "array",
                                        "description": "Pages to write in this order: "
                                        "[page number, 4 bytes as hex].",
                                        "items": {
                                            "type": "array",
                                            "prefixItems": [
                                                {"type": "integer"},
                                                {"type": "string", "pattern": "^[0-9a-f]{8}$"},
                                            ],
                                            "minItems": 2,
                                            "maxItems": 2,
                                        },
                                    },
                                    "tag_password": {
                                        "type": ["string", "null"],
                                        "pattern": "^[0-9a-f]{12}$",
                                        "description": "NTAG21x PWD (4 bytes) then PACK (2), "
                                        "hex; only with a write.",
                                    },
                                    "loading": _VOLUME,
                                    "target": {
                                        "type": ["object", "null"],
                                        "properties": {
                                            "purchase_count": {"type": "integer"},
                                            "pending_volume": _VOLUME,
                                        },
                                    },
                                    "account_no": {"type": "string"},
                                    "meter_no": {"type": "string"},
                                    "card_no": {"type": "string"},
                                    "card": {
                                        "type": "object",
                                        "properties": {
                                            "purchase_count": {"type": "integer"},
                                            "pending_volume": _VOLUME,
                                            "pending_applied": {"type": "boolean"},
                                        },
                                    },
                                    "meter": {
                                        "type": "object",
                                        "properties": {
                                            "applied_count": {"type": "integer"},
                                            "remaining": _NULLABLE_VOLUME,
                                            "reported_at": {
                                                "type": ["string", "null"],
                                                "format": "date-time",
                                            },
                                        },
                                    },
                                    "completed_write_id": {"type": ["string", "null"]},
                                    "abandoned_write_id": {"type": ["string", "null"]},
                                    "applied_volume": _VOLUME,
                                    "alarms_opened": {
                                        "type": "array",
                                        "items": {"enum": ["leak", "tamper", "low_battery"]},
                                    },
                                },
                            }
                        }
                    },
                },
                **_UNAUTHORIZED,
                **_error_responses(
                    "bad_request",
                    "bad_image_encoding",
                    "card_unreadable",
                    "card_refused",
                    "card_mismatch",
                    "tag_uid_mismatch",
                    "card_lost",
                    "card_replaced",
                    "card_blacklisted",
                    "unknown_card",
                    "card_busy",
                    "card_out_of_sync",
                    "card_state_unknown",
                    "card_keys_unavailable",
                ),
            },
        }
    },
    "/kiosk/api/v1/confirm": {
        "post": {
            "operationId": "kioskConfirm",
            "summary": "Send the read-back after a write; equal to the target, the gas is loaded",
            "description": (
                "Idempotent: confirming a confirmed write with the same read-back answers the "
                "same success. Any authenticated kiosk may confirm: the read-back proves what "
                "the card carries."
            ),
            "security": _SECURITY,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["write_id", "image"],
                            "properties": {
                                "write_id": {"type": "string", "pattern": _WRITE_ID.pattern},
                                "image": _IMAGE,
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": {
                    "description": "The write is confirmed; its credits are loaded",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "status": {"const": "confirmed"},
                                    "write_id": {"type": "string"},
                                    "loaded": _VOLUME,
                                    "purchase_count": {"type": "integer"},
                                    "pending_volume": _VOLUME,
                                    "confirmed_at": {"type": "string", "format": "date-time"},
                                    "account_no": {"type": "string"},
                                    "meter_no": {"type": "string"},
                                    "card_no": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                **_UNAUTHORIZED,
                **_error_responses(
                    "bad_request",
                    "bad_image_encoding",
                    "card_unreadable",
                    "unknown_write",
                    "card_busy",
                    "readback_mismatch",
                    "write_abandoned",
                ),
            },
        }
    },
}
