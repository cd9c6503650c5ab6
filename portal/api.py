"""The JSON API under /api/v1/ and its OpenAPI document."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.get("/openapi.json")
def openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document describing this API."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "Ranqi API", "version": "1"},
        "paths": {},
    }
