"""The payer's openid for WeChat Pay JSAPI, through WeChat's web OAuth (网页授权, snsapi_base).

Inside WeChat a payment starts with WeixinJSBridge (JSAPI), which needs the payer's
openid under the appid the payment is made for. The buy flow gets it once per browser
session: redirect to WeChat's authorize URL with a random ``state`` kept in the session
(CSRF), come back with a ``code``, exchange it with wechatpy's ``WeChatOAuth`` for the
openid, keep the openid in the session. It belongs to the payer (whoever holds the phone),
not to the gas account: anyone may pay for an account.

Settings (``current_app.config``; when JSAPI is not configured, WeChat in WeChat stays H5):

- ``WECHAT_OAUTH_SECRET_FILE``: a file holding the 公众号's AppSecret. Required (live).
- ``WECHAT_OAUTH_APPID``: the 公众号's AppID; default the WeChat Pay v3 provider's appid,
  and it must be that appid (an openid exists per appid, and JSAPI prepay checks it).
- ``WECHAT_OAUTH_API_BASE_URL`` (default ``https://api.weixin.qq.com/``) and
  ``WECHAT_OAUTH_AUTHORIZE_BASE_URL`` (default ``https://open.weixin.qq.com/connect/``).
- ``WECHAT_OAUTH_TIMEOUT``: seconds for the code exchange (default 10).

In sandbox mode (``RANQI_PAYMENTS=sandbox``) all of them come from the sandbox: the
portal mounts :mod:`payments.sandbox.wechat_oauth` at ``/sandbox/weixin`` (see
:func:`mount_sandbox`), whose 公众号 is the v3 sandbox merchant's appid and whose
AppSecret is derived from the sandbox keys.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import requests
from flask import Flask, current_app, session
from flask.blueprints import BlueprintSetupState
from wechatpy.exceptions import WeChatOAuthException  # type: ignore[import-untyped]
from wechatpy.oauth import WeChatOAuth  # type: ignore[import-untyped]

log = logging.getLogger(__name__)

#: the session key of the payer's openid: {"appid": ..., "openid": ...}
SESSION_OPENID: Final = "wechat_openid"
#: the session key of an authorisation under way: {"state", "next", "at"}
SESSION_PENDING: Final = "wechat_oauth"
#: how long a resident may take between leaving for WeChat and coming back
STATE_LIFETIME_SECONDS: Final = 600
#: where the sandbox's WeChat (OAuth and the WeixinJSBridge stand-in) is mounted
SANDBOX_PREFIX: Final = "/sandbox/weixin"
#: an openid or a code as WeChat makes them (openids: 28 characters of this alphabet)
TOKEN_RE: Final = re.compile(r"[A-Za-z0-9_-]{1,128}")
EXTENSION: Final = "ranqi_wechat_oauth"

DEFAULT_API_BASE_URL: Final = "https://api.weixin.qq.com/"
DEFAULT_AUTHORIZE_BASE_URL: Final = "https://open.weixin.qq.com/connect/"


@dataclass(frozen=True)
class OAuthSettings:
    """The 公众号 the openid is asked under, and where WeChat's OAuth is reached."""

    appid: str
    secret: str = field(repr=False)
    api_base_url: str = DEFAULT_API_BASE_URL
    authorize_base_url: str = DEFAULT_AUTHORIZE_BASE_URL
    timeout: float = 10.0
    #: sandbox only: where the sandbox's WeChat is mounted (its WeixinJSBridge stand-in)
    sandbox_url: str | None = None


class OAuthProblem(Exception):
    """The authorisation did not give an openid: ``state``, ``denied`` or ``exchange``."""

    def __init__(self, code: str, next_path: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.next_path = next_path


class _TimeoutSession(requests.Session):
    """A requests session with a default timeout (wechatpy's WeChatOAuth sets none)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        return super().request(*args, **kwargs)


# --- the sandbox ---------------------------------------------------------------------------


def mount_sandbox(state: BlueprintSetupState) -> None:
    """``record_once`` hook: in sandbox mode, mount the sandbox's WeChat OAuth and
    WeixinJSBridge stand-in at ``/sandbox/weixin`` and point the OAuth settings at it.

    It uses the v3 sandbox's keys (made here if ``providers`` has not made them yet: the
    same files, under a file lock). Never in production (``providers`` refuses sandbox
    mode there too, but this hook runs first).
    """
    app = state.app
    if app.config.get("PAYMENTS") != "sandbox" or app.config.get("RANQI_ENV") == "production":
        return
    from payments.sandbox import wechat_oauth as oauth_sandbox
    from payments.sandbox import wechat_v3 as v3_sandbox
    from payments.sandbox.store import SandboxStore

    folder = Path(app.instance_path) / "sandbox"
    keys = v3_sandbox.ensure_sandbox_keys(folder / "wechat")  # the folder providers uses
    public_url = str(app.config["PUBLIC_URL"]).rstrip("/")
    config = oauth_sandbox.SandboxConfig.from_keys(
        keys, registered_domain=urlsplit(public_url).netloc
    )
    store = SandboxStore(folder / "sandbox.sqlite3")  # the file the other gateways use
    app.register_blueprint(oauth_sandbox.create_blueprint(store, config), url_prefix=SANDBOX_PREFIX)
    base = f"{public_url}{SANDBOX_PREFIX}"
    app.extensions[EXTENSION] = OAuthSettings(
        appid=config.appid,
        secret=config.app_secret,
        api_base_url=f"{base}/",
        authorize_base_url=f"{base}/connect/",
        sandbox_url=base,
    )


# --- settings --------------------------------------------------------------------------


def settings() -> OAuthSettings | None:
    """The OAuth settings of this app, or None when JSAPI cannot get an openid here."""
    app = current_app
    known: OAuthSettings | None = app.extensions.get(EXTENSION)
    if known is not None:
        return known
    made = _live_settings(app)
    if made is not None:
        app.extensions[EXTENSION] = made
    return made


def _provider_appid(app: Flask) -> str | None:
    from payments.wechat_v3 import WechatV3Provider

    provider = app.extensions.get("ranqi_providers", {}).get("wechat")
    return provider.config.appid if isinstance(provider, WechatV3Provider) else None


def _live_settings(app: Flask) -> OAuthSettings | None:
    secret_file = app.config.get("WECHAT_OAUTH_SECRET_FILE")
    if not secret_file:
        return None
    provider_appid = _provider_appid(app)
    appid = str(app.config.get("WECHAT_OAUTH_APPID") or provider_appid or "")
    if not appid:
        log.error("WECHAT_OAUTH_APPID is not set and no WeChat Pay v3 provider names one")
        return None
    if provider_appid is not None and appid != provider_appid:
        log.error(
            "WECHAT_OAUTH_APPID %s is not the WeChat Pay appid %s: openids would not match; "
            "JSAPI is not offered",
            appid,
            provider_appid,
        )
        return None
    try:
        secret = Path(str(secret_file)).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as error:
        log.error("WECHAT_OAUTH_SECRET_FILE cannot be read: %s", error)
        return None
    if not secret:
        log.error("WECHAT_OAUTH_SECRET_FILE is empty")
        return None
    return OAuthSettings(
        appid=appid,
        secret=secret,
        api_base_url=str(app.config.get("WECHAT_OAUTH_API_BASE_URL", DEFAULT_API_BASE_URL)),
        authorize_base_url=str(
            app.config.get("WECHAT_OAUTH_AUTHORIZE_BASE_URL", DEFAULT_AUTHORIZE_BASE_URL)
        ),
        timeout=float(app.config.get("WECHAT_OAUTH_TIMEOUT", 10.0)),
    )


def available() -> bool:
    """Whether this app can get a payer's openid (and so offer JSAPI inside WeChat)."""
    return settings() is not None


def client(config: OAuthSettings, redirect_uri: str, state: str = "") -> Any:
    """wechatpy's WeChatOAuth for snsapi_base (silent: the openid, no profile)."""
    oauth = WeChatOAuth(config.appid, config.secret, redirect_uri, scope="snsapi_base", state=state)
    # wechatpy 1.8.18 has no parameter for WeChat's hosts: authorize_url starts with the
    # OAUTH_BASE_URL class attribute and every API call with API_BASE_URL. Setting them on
    # the instance, here and nowhere else, is how the sandbox (or a proxy) is reached.
    oauth.OAUTH_BASE_URL = config.authorize_base_url
    oauth.API_BASE_URL = config.api_base_url
    oauth._http = _TimeoutSession(config.timeout)
    return oauth


# --- the flow --------------------------------------------------------------------------


def session_openid(config: OAuthSettings) -> str | None:
    """The payer's openid kept in this browser session, if it is for this appid."""
    kept = session.get(SESSION_OPENID)
    if isinstance(kept, dict) and kept.get("appid") == config.appid:
        openid = kept.get("openid")
        if isinstance(openid, str) and TOKEN_RE.fullmatch(openid):
            return openid
    return None


def forget_openid() -> None:
    """Drop the openid kept in this session: the next payment asks WeChat again."""
    session.pop(SESSION_OPENID, None)


def begin(config: OAuthSettings, redirect_uri: str, next_path: str) -> str:
    """Remember a fresh state and where to go next; the authorize URL to send the payer to.

    ``next_path`` is a path of this app (kept in the session, so never an open redirect).
    """
    state = secrets.token_hex(16)  # WeChat: up to 128 bytes of a-zA-Z0-9
    session[SESSION_PENDING] = {"state": state, "next": next_path, "at": int(time.time())}
    return str(client(config, redirect_uri, state).authorize_url)


def finish(config: OAuthSettings, redirect_uri: str, args: Any) -> tuple[str, str]:
    """Check the state, exchange the code for the openid and keep it in the session.

    Returns (openid, the path to go on to); raises :class:`OAuthProblem`. A state that
    does not match leaves the authorisation under way untouched and exchanges nothing.
    """
    pending = session.get(SESSION_PENDING)
    sent = str(args.get("state", ""))
    if (
        not isinstance(pending, dict)
        or not isinstance(pending.get("state"), str)
        or not sent
        or not hmac.compare_digest(pending["state"].encode(), sent.encode("utf-8", "replace"))
    ):
        raise OAuthProblem("state")
    session.pop(SESSION_PENDING, None)  # one state, one use
    next_path = str(pending.get("next", ""))
    if not next_path.startswith("/") or next_path.startswith("//"):
        raise OAuthProblem("state")
    if int(time.time()) - int(pending.get("at", 0)) > STATE_LIFETIME_SECONDS:
        raise OAuthProblem("state", next_path)
    code = str(args.get("code", ""))
    if not code:  # refused (snsapi_userinfo) or WeChat gave none
        raise OAuthProblem("denied", next_path)
    if not TOKEN_RE.fullmatch(code):
        raise OAuthProblem("exchange", next_path)
    oauth = client(config, redirect_uri)
    try:
        answer = oauth.fetch_access_token(code)
    except WeChatOAuthException as error:
        log.warning("WeChat OAuth refused the code: %s", error)
        raise OAuthProblem("exchange", next_path) from error
    except (requests.RequestException, ValueError, KeyError) as error:
        log.warning("WeChat OAuth code exchange failed: %s", error)
        raise OAuthProblem("exchange", next_path) from error
    finally:
        oauth._http.close()
    openid = answer.get("openid") if isinstance(answer, dict) else None
    if not isinstance(openid, str) or not TOKEN_RE.fullmatch(openid):
        log.warning("WeChat OAuth answered without a usable openid")
        raise OAuthProblem("exchange", next_path)
    session[SESSION_OPENID] = {"appid": config.appid, "openid": openid}
    return openid, next_path


def jsapi_standin_url(
    config: OAuthSettings, params: dict[str, str], redirect_url: str
) -> str | None:
    """Sandbox only: the stand-in page for WeixinJSBridge with these params; None when live."""
    if not config.sandbox_url:
        return None
    from payments.sandbox.wechat_oauth import jsapi_standin_url as standin

    return standin(config.sandbox_url, params, redirect_url)
