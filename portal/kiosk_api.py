"""The kiosk API under /kiosk/api/v1/: token endpoint and what kiosks may ask."""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_oauth2 import current_token
from flask import Blueprint, Response

from portal.kiosk_auth import SCOPE, authorization, require_kiosk

bp = Blueprint("kiosk_api", __name__, url_prefix="/kiosk/api/v1")


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
