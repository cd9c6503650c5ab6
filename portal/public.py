"""Residents' pages: home and account look-up, public information."""

from __future__ import annotations

from flask import Blueprint, render_template

bp = Blueprint("public", __name__)


@bp.get("/")
def home() -> str:
    """What Ranqi is, and the account look-up form."""
    return render_template("home.html")
