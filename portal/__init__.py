"""The Ranqi portal: residents' pages, the JSON API, and (later) callbacks, kiosks, staff."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, request
from flask_babel import Babel

from portal import db
from portal.config import Config, TestConfig

SUPPORTED_LOCALES = ("zh", "en")


def select_locale() -> str:
    """The resident's choice (``?lang=`` or cookie), else the browser's, else Chinese."""
    chosen = request.args.get("lang") or request.cookies.get("lang")
    if chosen in SUPPORTED_LOCALES:
        return chosen
    best = request.accept_languages.best_match(SUPPORTED_LOCALES)
    return best or "zh"


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the app from the environment; ``test_config`` switches to :class:`TestConfig`."""
    config = TestConfig() if test_config is not None else Config()
    if test_config:
        for key, value in test_config.items():
            setattr(config, key, value)
    config.finalise()

    app = Flask(__name__, static_folder="../static", instance_path=str(config.INSTANCE_PATH))
    app.config.from_mapping(config.as_dict())
    logging.basicConfig(
        level=app.config["LOG_LEVEL"], format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    if app.config["PROXY_COUNT"]:
        from werkzeug.middleware.proxy_fix import ProxyFix

        count = app.config["PROXY_COUNT"]
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=count, x_proto=count, x_host=count
        )
    db.init_app(app)
    Babel(app, locale_selector=select_locale, default_translation_directories="translations")

    from portal import (
        api,
        api_orders,
        callbacks,
        cli,
        kiosk_api,
        kiosk_auth,
        kiosk_orders,
        limits,
        openapi,
        providers,
        public,
    )

    limits.init_app(app)
    app.register_blueprint(public.bp)  # with the purchase flow nested in it
    app.register_blueprint(api.bp)  # api_orders adds the order routes to it
    app.register_blueprint(callbacks.bp)
    providers.init_app(app)
    kiosk_auth.init_app(app)
    app.register_blueprint(kiosk_api.bp)  # kiosk_orders adds the walk-up sale routes to it
    openapi.extend(paths=api_orders.ORDERS_OPENAPI_PATHS)
    openapi.extend(paths=kiosk_orders.KIOSK_ORDERS_OPENAPI_PATHS)
    openapi.extend(
        paths=kiosk_api.KIOSK_OPENAPI_PATHS,
        security_schemes=kiosk_api.KIOSK_OPENAPI_SECURITY_SCHEMES,
    )
    cli.init_app(app)
    return app
