"""CSRF tokens for the residents' forms: one random token per browser session.

Forms carry it in a hidden ``csrf_token`` field; htmx sends it in the ``X-CSRF-Token``
header from ``hx-headers`` on ``<body>``. A POST without the right token is refused.
"""

from __future__ import annotations

import hmac
import secrets

from flask import request, session

SESSION_KEY = "csrf"
FIELD = "csrf_token"
HEADER = "X-CSRF-Token"


def csrf_token() -> str:
    """This session's token, made on first use."""
    token = session.get(SESSION_KEY)
    if not isinstance(token, str) or not token:
        token = secrets.token_urlsafe(24)
        session[SESSION_KEY] = token
    return token


def token_is_valid() -> bool:
    """Whether this request carries the session's token (form field or header)."""
    expected = session.get(SESSION_KEY)
    sent = request.headers.get(HEADER) or request.form.get(FIELD) or ""
    if not isinstance(expected, str) or not expected or not sent:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode())
