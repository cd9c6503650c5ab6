"""Rate limits for the residents' pages (Flask-Limiter): look-ups per client, second-factor
attempts per account.

Each app gets its own :class:`Limiter` (``init_app``), whose storage comes from
``RATELIMIT_STORAGE_URI`` ("memory://" by default; a Redis URL when several workers or
hosts must share the counts). Views ask :func:`allow` explicitly rather than decorating
routes: a limit hit gets a localized page or htmx fragment, and the second factor is
limited per account (a key from the form), not per client.
"""

from __future__ import annotations

import logging
import threading
import time

from flask import Flask, current_app, request
from flask_limiter import Limiter
from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter, RateLimiter

log = logging.getLogger(__name__)

#: limit name → (config name, default)
LIMITS: dict[str, tuple[str, str]] = {
    # account look-ups (and buy pages, second-factor posts) per client address
    "lookup": ("RATELIMIT_LOOKUP", "30 per minute"),
    # second-factor guesses per account, whoever makes them
    "second_factor": ("RATELIMIT_SECOND_FACTOR", "5 per 15 minutes"),
    # live quotes while typing, per client address
    "quote": ("RATELIMIT_QUOTE", "120 per minute"),
    # orders placed from the buy page, per client address (each one calls a provider)
    "order": ("RATELIMIT_ORDER", "10 per minute"),
}

_init_lock = threading.Lock()


def client_address() -> str:
    """Who is asking: the remote address (behind a proxy, ProxyFix must set it)."""
    return request.remote_addr or "unknown"


def init_app(app: Flask) -> Limiter:
    """Give the app its limiter, storing counts where ``RATELIMIT_STORAGE_URI`` says.

    Call it from create_app, before the first request.
    """
    storage_uri = app.config.setdefault("RATELIMIT_STORAGE_URI", "memory://")
    limiter = Limiter(key_func=client_address, app=app, storage_uri=storage_uri, key_prefix="ranqi")
    app.extensions["ranqi_rate_limiter"] = limiter.limiter
    return limiter


def _strategy() -> RateLimiter:
    """The app's rate limiter; made on first use (without Flask hooks) if init_app was not
    called, so the pages stay limited whatever the app factory does.
    """
    extensions = current_app.extensions
    with _init_lock:
        strategy: RateLimiter | None = extensions.get("ranqi_rate_limiter")
        if strategy is None:
            uri = str(current_app.config.get("RATELIMIT_STORAGE_URI", "memory://"))
            strategy = FixedWindowRateLimiter(storage_from_string(uri))
            extensions["ranqi_rate_limiter"] = strategy
    return strategy


def limit_item(name: str) -> RateLimitItem:
    """The configured limit called ``name``, e.g. 30 per minute."""
    config_name, default = LIMITS[name]
    return parse(str(current_app.config.get(config_name, default)))


def allow(name: str, key: str, *, count_it: bool = True, fail_open: bool = True) -> bool:
    """Whether one more request under limit ``name`` for ``key`` is allowed; counts it unless
    ``count_it`` is false. When the storage fails, ``fail_open`` decides (and it is logged).
    """
    try:
        strategy = _strategy()
        item = limit_item(name)
        return strategy.hit(item, name, key) if count_it else strategy.test(item, name, key)
    except Exception:  # the storage (Redis) is down: decide, say so, go on
        log.exception("rate limit storage failed for %s", name)
        return fail_open


def retry_after(name: str, key: str) -> int:
    """Seconds until limit ``name`` lets ``key`` in again (at least 1)."""
    try:
        reset_at, _remaining = _strategy().get_window_stats(limit_item(name), name, key)
    except Exception:
        log.exception("rate limit storage failed for %s", name)
        return 60
    return max(1, int(reset_at - time.time()) + 1)
