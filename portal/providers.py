"""Which payment providers the app talks to: the sandbox gateways, or the real ones.

``RANQI_PAYMENTS`` picks the mode:

- ``sandbox``: the project's own Alipay and WeChat Pay (v3 and v2) gateways are mounted
  under ``/sandbox/...`` in this app, with keys generated under the instance folder,
  and the adapters talk to them over HTTP at ``RANQI_PUBLIC_URL`` exactly as they would
  talk to the real providers. Refused when ``RANQI_ENV=production``.
- ``live``: each provider whose settings are complete (README: configuration) is used.
- ``none``: no provider (tests register their own).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from flask import Flask

from payments.base import Provider
from payments.sandbox.sender import NotifySender, Rules
from payments.sandbox.store import SandboxStore
from portal.config import ConfigError

log = logging.getLogger(__name__)

#: mount points of the sandbox gateways
SANDBOX_PREFIX = {
    "alipay": "/sandbox/alipay",
    "wechat": "/sandbox/wechat",
    "wechat_v2": "/sandbox/wechat_v2",
}
SANDBOX_ALIPAY_APP_ID = "2021000000000001"
SANDBOX_ALIPAY_SELLER_ID = "2088000000000001"


def notify_url(app: Flask, provider: str) -> str:
    path = {"alipay": "alipay", "wechat": "wechat", "wechat_v2": "wechat-v2"}[provider]
    return f"{app.config['PUBLIC_URL'].rstrip('/')}/payments/{path}/notify"


def init_app(app: Flask) -> None:
    """Register the providers for ``RANQI_PAYMENTS`` in ``app.extensions``."""
    mode = app.config["PAYMENTS"]
    registry: dict[str, Provider] = app.extensions.setdefault("ranqi_providers", {})
    if mode == "none":
        return
    if mode == "sandbox":
        if app.config["RANQI_ENV"] == "production":
            raise ConfigError("RANQI_PAYMENTS=sandbox is refused in production")
        registry.update(_sandbox(app))
    elif mode == "live":
        registry.update(_live(app))
    else:
        raise ConfigError(f"RANQI_PAYMENTS must be sandbox, live or none, not {mode!r}")
    log.info("payment providers (%s): %s", mode, ", ".join(sorted(registry)) or "none")


def _sandbox(app: Flask) -> dict[str, Provider]:
    from payments import alipay, wechat_v2, wechat_v3
    from payments.sandbox import alipay as alipay_sandbox
    from payments.sandbox import wechat_v2 as v2_sandbox
    from payments.sandbox import wechat_v3 as v3_sandbox

    base = app.config["PUBLIC_URL"].rstrip("/")
    folder = Path(app.instance_path) / "sandbox"
    store = SandboxStore(folder / "sandbox.sqlite3")
    app.extensions["ranqi_sandbox_store"] = store

    ali_keys = alipay_sandbox.ensure_sandbox_keys(folder / "alipay")
    app.register_blueprint(
        alipay_sandbox.create_blueprint(
            store,
            ali_keys.sandbox_config(
                app_id=SANDBOX_ALIPAY_APP_ID, seller_id=SANDBOX_ALIPAY_SELLER_ID
            ),
        ),
        url_prefix=SANDBOX_PREFIX["alipay"],
    )
    v3_keys = v3_sandbox.ensure_sandbox_keys(folder / "wechat")
    v3_config = v3_keys.sandbox_config()
    app.extensions["ranqi_sandbox_wechat_v3"] = v3_config
    app.register_blueprint(
        v3_sandbox.create_blueprint(store, v3_config),
        url_prefix=SANDBOX_PREFIX["wechat"],
    )
    v2_keys = v2_sandbox.ensure_sandbox_keys(folder / "wechat_v2")
    app.register_blueprint(
        v2_sandbox.create_blueprint(store, v2_keys.sandbox_config()),
        url_prefix=SANDBOX_PREFIX["wechat_v2"],
    )
    return {
        "alipay": alipay.AlipayProvider(
            ali_keys.adapter_config(
                gateway_url=f"{base}{SANDBOX_PREFIX['alipay']}/gateway.do",
                app_id=SANDBOX_ALIPAY_APP_ID,
                seller_id=SANDBOX_ALIPAY_SELLER_ID,
                notify_url=notify_url(app, "alipay"),
            )
        ),
        "wechat": wechat_v3.WechatV3Provider(
            v3_keys.provider_config(f"{base}{SANDBOX_PREFIX['wechat']}", notify_url(app, "wechat"))
        ),
        "wechat_v2": wechat_v2.WechatV2Provider(
            v2_keys.adapter_config(
                f"{base}{SANDBOX_PREFIX['wechat_v2']}/", notify_url(app, "wechat_v2")
            )
        ),
    }


def sandbox_sender(app: Flask) -> NotifySender | None:
    """The thread that delivers the sandbox gateways' notifies (``ranqi serve`` starts it)."""
    store: SandboxStore | None = app.extensions.get("ranqi_sandbox_store")
    if store is None:
        return None
    from payments.sandbox import alipay as alipay_sandbox
    from payments.sandbox import wechat_v2 as v2_sandbox
    from payments.sandbox import wechat_v3 as v3_sandbox

    rules: Rules = {
        "alipay": (alipay_sandbox.SCHEDULE, alipay_sandbox.accepted),
        "wechat": (v3_sandbox.SCHEDULE, v3_sandbox.accepted),
        "wechat_v2": (v2_sandbox.SCHEDULE, v2_sandbox.accepted),
    }
    v3_config: v3_sandbox.SandboxConfig = app.extensions["ranqi_sandbox_wechat_v3"]
    return NotifySender(
        store,
        rules,
        time_scale=app.config["SANDBOX_TIME_SCALE"],
        resigners={"wechat": functools.partial(v3_sandbox.resign_notify, v3_config)},
    )


def _file(name: str) -> Path | None:
    value = os.environ.get(name, "")
    return Path(value) if value else None


def _live(app: Flask) -> dict[str, Provider]:
    from payments import alipay, wechat_v2, wechat_v3

    registry: dict[str, Provider] = {}
    env = os.environ
    if env.get("ALIPAY_APP_ID"):
        registry["alipay"] = alipay.AlipayProvider(
            alipay.AlipayConfig(
                app_id=env["ALIPAY_APP_ID"],
                app_private_key_path=_required_file("ALIPAY_APP_PRIVATE_KEY_FILE"),
                alipay_public_key_path=_required_file("ALIPAY_PUBLIC_KEY_FILE"),
                gateway_url=env.get("ALIPAY_GATEWAY_URL", "https://openapi.alipay.com/gateway.do"),
                seller_id=env.get("ALIPAY_SELLER_ID", ""),
                notify_url=notify_url(app, "alipay"),
            )
        )
    if env.get("WECHAT_MCHID"):
        registry["wechat"] = wechat_v3.WechatV3Provider(
            wechat_v3.WechatV3Config(
                appid=_required("WECHAT_APPID"),
                mchid=env["WECHAT_MCHID"],
                merchant_private_key_path=_required_file("WECHAT_PRIVATE_KEY_FILE"),
                merchant_cert_serial_no=_required("WECHAT_CERT_SERIAL_NO"),
                apiv3_key_path=_required_file("WECHAT_APIV3_KEY_FILE"),
                wechatpay_public_key_path=_required_file("WECHAT_PAY_PUBLIC_KEY_FILE"),
                wechatpay_public_key_id=_required("WECHAT_PAY_PUBLIC_KEY_ID"),
                notify_url=notify_url(app, "wechat"),
            )
        )
    if env.get("WECHAT_V2_MCH_ID"):
        registry["wechat_v2"] = wechat_v2.WechatV2Provider(
            wechat_v2.WechatV2Config(
                appid=_required("WECHAT_V2_APPID"),
                mch_id=env["WECHAT_V2_MCH_ID"],
                api_key_path=_required_file("WECHAT_V2_API_KEY_FILE"),
                notify_url=notify_url(app, "wechat_v2"),
                client_cert_path=_file("WECHAT_V2_CLIENT_CERT_FILE"),
                client_key_path=_file("WECHAT_V2_CLIENT_KEY_FILE"),
            )
        )
    return registry


def _required(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise ConfigError(f"{name} is required for this payment provider")
    return value


def _required_file(name: str) -> Path:
    path = Path(_required(name))
    if not path.is_file():
        raise ConfigError(f"{name}: no such file {path}")
    return path
