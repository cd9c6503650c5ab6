"""OAuth2 for kiosks: authlib's authorization server with the client-credentials grant.

Each kiosk is a confidential client. Its secret is 256 random bits, shown once by
``ranqi kiosks add`` and stored only as a SHA-256 hash (a fast hash suffices for a
secret that cannot be guessed; the comparison is constant-time). Access tokens live a
few minutes and are stored hashed too. Disabling a kiosk takes effect at once: every
request re-checks the kiosk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from typing import Any, ClassVar

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import Flask
from sqlalchemy import select

from models.base import utcnow
from models.staff import Kiosk, KioskToken
from portal import db

SCOPE = "kiosk"


def hash_secret(value: str) -> str:
    """SHA-256 hex of a client secret or access token."""
    return hashlib.sha256(value.encode()).hexdigest()


def new_credentials() -> tuple[str, str, str]:
    """A new (client_id, client_secret, secret hash); the secret is shown once."""
    client_id = f"kiosk-{secrets.token_hex(8)}"
    client_secret = secrets.token_urlsafe(32)
    return client_id, client_secret, hash_secret(client_secret)


class KioskClient(ClientMixin):  # type: ignore[misc]
    """A kiosk as authlib sees an OAuth2 client."""

    def __init__(self, kiosk: Kiosk) -> None:
        self.kiosk = kiosk

    def get_client_id(self) -> str:
        return self.kiosk.client_id

    def get_default_redirect_uri(self) -> str:
        return ""

    def get_allowed_scope(self, scope: str) -> str:
        return SCOPE

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        stored = self.kiosk.client_secret_hash
        return bool(stored) and hmac.compare_digest(stored, hash_secret(client_secret))

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in {"client_secret_basic", "client_secret_post"}

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


class StoredToken(TokenMixin):  # type: ignore[misc]
    def __init__(self, row: KioskToken) -> None:
        self.row = row

    def check_client(self, client: Any) -> bool:
        return isinstance(client, KioskClient) and client.kiosk.id == self.row.kiosk_id

    def get_scope(self) -> str:
        return self.row.scope

    def get_expires_in(self) -> int:
        return int((self.row.expires_at - self.row.issued_at).total_seconds())

    def is_expired(self) -> bool:
        return utcnow() >= self.row.expires_at

    def is_revoked(self) -> bool:
        # A disabled kiosk loses its tokens at once.
        return self.row.revoked or not self.row.kiosk.enabled


class KioskTokenValidator(BearerTokenValidator):  # type: ignore[misc]
    def authenticate_token(self, token_string: str) -> StoredToken | None:
        row = db.session().scalar(
            select(KioskToken).where(KioskToken.token_hash == hash_secret(token_string))
        )
        return StoredToken(row) if row is not None else None


class ClientCredentials(grants.ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post"]


def _query_client(client_id: str) -> KioskClient | None:
    kiosk = db.session().scalar(select(Kiosk).where(Kiosk.client_id == client_id))
    if kiosk is None or not kiosk.enabled:
        return None
    return KioskClient(kiosk)


def _save_token(token: dict[str, Any], request: Any) -> None:
    client: KioskClient = request.client
    kiosk_id = client.kiosk.id
    now = utcnow()
    session = db.session()
    # End the read transaction that found the client first: on SQLite a write inside a
    # transaction that began with a read cannot wait for another writer ("database is
    # locked" at once); a fresh one waits out busy_timeout. Harmless on PostgreSQL.
    session.rollback()
    session.add(
        KioskToken(
            kiosk_id=kiosk_id,
            token_hash=hash_secret(token["access_token"]),
            scope=token.get("scope", SCOPE),
            issued_at=now,
            expires_at=now + dt.timedelta(seconds=int(token["expires_in"])),
        )
    )
    session.commit()


authorization = AuthorizationServer()
require_kiosk = ResourceProtector()


def init_app(app: Flask) -> None:
    app.config.setdefault(
        "OAUTH2_TOKEN_EXPIRES_IN", {"client_credentials": app.config["KIOSK_TOKEN_SECONDS"]}
    )
    authorization.init_app(app, query_client=_query_client, save_token=_save_token)
    authorization.register_grant(ClientCredentials)
    require_kiosk.register_token_validator(KioskTokenValidator())
