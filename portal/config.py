"""Configuration, read from the environment. Every variable is listed in the README."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_INSTANCE = ROOT / "instance"


class ConfigError(RuntimeError):
    """The configuration cannot run: said at start-up, not at the first request."""


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


class Config:
    """Settings for a deployment; ``RANQI_ENV`` picks development or production rules."""

    def __init__(self) -> None:
        self.RANQI_ENV = _env("RANQI_ENV", "production")
        self.INSTANCE_PATH = Path(_env("RANQI_INSTANCE_PATH", str(DEFAULT_INSTANCE)))
        self.DATABASE_URL = _env(
            "DATABASE_URL", f"sqlite:///{self.INSTANCE_PATH / 'ranqi.sqlite3'}"
        )
        self.SECRET_KEY = os.environ.get("SECRET_KEY", "")
        self.BABEL_DEFAULT_LOCALE = _env("RANQI_DEFAULT_LOCALE", "zh")
        self.BABEL_DEFAULT_TIMEZONE = "Asia/Shanghai"
        self.LOG_LEVEL = _env("RANQI_LOG_LEVEL", "INFO")
        self.SQL_ECHO = _env("RANQI_SQL_ECHO", "0") == "1"
        self.JSON_SORT_KEYS = False
        #: an unpaid order expires (and is closed at the provider) after this many seconds
        self.ORDER_TTL_SECONDS = int(_env("RANQI_ORDER_TTL_SECONDS", "900"))
        #: unpaid orders older than this are queried at the provider (lost notifies)
        self.ORDER_QUERY_AFTER_SECONDS = int(_env("RANQI_ORDER_QUERY_AFTER_SECONDS", "120"))
        #: payment providers: "sandbox", "live" or "none" (default by RANQI_ENV, see finalise)
        self.PAYMENTS = _env("RANQI_PAYMENTS", "")
        #: the URL residents and providers reach this app at (notify URLs, sandbox links)
        self.PUBLIC_URL = _env("RANQI_PUBLIC_URL", "http://127.0.0.1:5000")
        #: sandbox gateways: multiply the providers' notify retry waits by this
        self.SANDBOX_TIME_SCALE = float(_env("RANQI_SANDBOX_TIME_SCALE", "1"))
        #: lifetime of a kiosk's OAuth2 access token
        self.KIOSK_TOKEN_SECONDS = int(_env("RANQI_KIOSK_TOKEN_SECONDS", "300"))
        #: how long another kiosk's outstanding card write counts as in progress
        self.KIOSK_WRITE_HOLD_SECONDS = int(_env("RANQI_KIOSK_WRITE_HOLD_SECONDS", "30"))
        #: card keys (README: "Card keys"); unset: generated under the instance folder in
        #: development and testing, refused in production
        self.CARD_SIGNING_KEY_FILES = os.environ.get("RANQI_CARD_SIGNING_KEY_FILES") or None
        self.CARD_SIGNING_KEY_VERSION = os.environ.get("RANQI_CARD_SIGNING_KEY_VERSION") or None
        self.CARD_METER_MASTER_KEY_FILE = os.environ.get("RANQI_CARD_METER_MASTER_KEY_FILE") or None
        self.CARD_TAG_MASTER_KEY_FILE = os.environ.get("RANQI_CARD_TAG_MASTER_KEY_FILE") or None
        #: rate limits (Flask-Limiter): storage, and the limits themselves
        self.RATELIMIT_STORAGE_URI = _env("RANQI_RATELIMIT_STORAGE_URI", "memory://")
        self.RATELIMIT_LOOKUP = _env("RANQI_RATELIMIT_LOOKUP", "30 per minute")
        self.RATELIMIT_SECOND_FACTOR = _env("RANQI_RATELIMIT_SECOND_FACTOR", "5 per 15 minutes")
        self.RATELIMIT_QUOTE = _env("RANQI_RATELIMIT_QUOTE", "120 per minute")
        self.RATELIMIT_ORDER = _env("RANQI_RATELIMIT_ORDER", "10 per minute")
        #: how long a browser stays verified after the second factor
        self.SECOND_FACTOR_SECONDS = int(_env("RANQI_SECOND_FACTOR_SECONDS", "1800"))
        #: number of reverse proxies in front of the app whose X-Forwarded-* to trust
        self.PROXY_COUNT = int(_env("RANQI_PROXY_COUNT", "0"))
        self.SESSION_COOKIE_SAMESITE = "Lax"
        self.SESSION_COOKIE_HTTPONLY = True
        #: WeChat web OAuth (the payer's openid for JSAPI), set only when configured
        for name in (
            "WECHAT_OAUTH_APPID",
            "WECHAT_OAUTH_SECRET_FILE",
            "WECHAT_OAUTH_API_BASE_URL",
            "WECHAT_OAUTH_AUTHORIZE_BASE_URL",
        ):
            if os.environ.get(name):
                setattr(self, name, os.environ[name])
        #: run the jobs in a thread of the web process every N seconds (0: don't)
        self.JOBS_INPROCESS_SECONDS = float(_env("RANQI_JOBS_INPROCESS_SECONDS", "0"))

    def finalise(self) -> None:
        """Check what cannot be defaulted; fill development-only conveniences."""
        if self.RANQI_ENV not in {"production", "development", "testing"}:
            raise ConfigError(
                f"RANQI_ENV must be production, development or testing, not {self.RANQI_ENV!r}"
            )
        if not self.SECRET_KEY:
            if self.RANQI_ENV == "production":
                raise ConfigError("SECRET_KEY is not set (required unless RANQI_ENV=development)")
            # Development keeps one random key in instance/ so that sessions survive restarts.
            self.INSTANCE_PATH.mkdir(parents=True, exist_ok=True)
            key_file = self.INSTANCE_PATH / "dev-secret-key"
            if not key_file.exists():
                key_file.write_text(secrets.token_hex(32))
                key_file.chmod(0o600)
            self.SECRET_KEY = key_file.read_text().strip()
        self.SESSION_COOKIE_SECURE = self.PUBLIC_URL.startswith("https://")
        if not self.PAYMENTS:
            self.PAYMENTS = {"development": "sandbox", "production": "live"}.get(
                self.RANQI_ENV, "none"
            )

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k.isupper()}


class TestConfig(Config):
    """Tests: a database from ``TEST_DATABASE_URL`` (the test fixtures set it)."""

    def __init__(self) -> None:
        super().__init__()
        self.RANQI_ENV = "testing"
        self.TESTING = True
        self.SECRET_KEY = "test-secret-key-not-for-production"  # noqa: S105
        self.DATABASE_URL = os.environ.get("TEST_DATABASE_URL") or "sqlite://"
