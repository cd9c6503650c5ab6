"""A local stand-in for WeChat's side of JSAPI payments: web OAuth and WeixinJSBridge.

Mounted at ``/sandbox/weixin`` in sandbox mode only, beside the WeChat Pay v3 gateway at
``/sandbox/wechat``. It plays three parts that the real WeChat plays:

- ``GET /connect/oauth2/authorize`` (open.weixin.qq.com): checks the appid and the
  redirect_uri's domain (网页授权域名), then shows a page where the sandbox "user" picks
  who they are and allows (or refuses); allowing redirects back with ``code`` and
  ``state``. Real WeChat skips this page for ``snsapi_base`` (silent authorisation);
  the sandbox shows it so that a developer sees the step and can play several payers.
- ``GET /sns/oauth2/access_token`` (api.weixin.qq.com): exchanges the code, once, within
  five minutes, for the openid; errors are WeChat's ``{"errcode", "errmsg"}`` with HTTP 200.
- ``GET /jsapi``: what ``WeixinJSBridge.invoke('getBrandWCPayRequest', params)`` does in
  the WeChat app: checks ``paySign`` (RSA-SHA256 over appId, timeStamp, nonceStr and
  package with the merchant's key, API v3) and opens the v3 gateway's cashier with
  支付 Pay / 取消 Cancel. ``redirect_url`` (not a WeixinJSBridge field) is where the
  cashier's "back to merchant" link goes.

The openid of a sandbox user is derived from the appid and the user's name, so the same
name is the same payer. The AppSecret is derived from the v3 sandbox's APIv3 key
(:func:`sandbox_app_secret`), so the portal and the sandbox agree without another file.
Codes live in the sandbox store's SQLite file (table ``weixin_oauth_code``).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import html
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode, urlsplit, urlunsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import Blueprint, Response, redirect, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from payments.sandbox.store import SandboxStore
from payments.sandbox.wechat_v3 import SandboxKeys

#: the WeChat Pay v3 sandbox's provider name in the store
PAY_PROVIDER: Final = "wechat"
#: a code may be exchanged once, within this long (WeChat: 5 minutes)
CODE_LIFETIME: Final = dt.timedelta(minutes=5)
SCOPES: Final = frozenset({"snsapi_base", "snsapi_userinfo"})
#: the fields WeixinJSBridge's getBrandWCPayRequest takes, paySign aside
JSAPI_FIELDS: Final = ("appId", "timeStamp", "nonceStr", "package", "signType")
#: a sandbox user's name on the consent page
USER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS weixin_oauth_code (
    code TEXT PRIMARY KEY,
    appid TEXT NOT NULL,
    openid TEXT NOT NULL,
    scope TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
);
"""


@dataclass(frozen=True)
class SandboxConfig:
    """The 公众号 the sandbox knows, and the merchant key that signs JSAPI paySign."""

    appid: str
    app_secret: str = field(repr=False)
    #: the WeChat Pay v3 merchant's public key: verifies paySign (signType RSA)
    merchant_public_key_path: Path
    #: 网页授权域名: the host[:port] a redirect_uri must be on; "" accepts any host
    registered_domain: str = ""

    @classmethod
    def from_keys(cls, keys: SandboxKeys, registered_domain: str = "") -> SandboxConfig:
        """The config for the v3 sandbox merchant made by ``ensure_sandbox_keys``."""
        return cls(
            appid=keys.appid,
            app_secret=sandbox_app_secret(keys),
            merchant_public_key_path=keys.merchant_public_key_path,
            registered_domain=registered_domain,
        )


def sandbox_app_secret(keys: SandboxKeys) -> str:
    """The sandbox 公众号's AppSecret (32 hex digits), derived from the APIv3 key."""
    apiv3_key = keys.apiv3_key_path.read_text(encoding="ascii").strip()
    return hmac.new(apiv3_key.encode(), b"weixin oauth appsecret", hashlib.sha256).hexdigest()[:32]


def sandbox_openid(config: SandboxConfig, user: str) -> str:
    """The openid of sandbox user ``user`` under the appid: "o" + 27 URL-safe characters."""
    mac = hmac.new(config.app_secret.encode(), f"{config.appid}\n{user}".encode(), hashlib.sha256)
    return "o" + base64.urlsafe_b64encode(mac.digest()).decode()[:27]


def jsapi_standin_url(base_url: str, jsapi_params: dict[str, str], redirect_url: str = "") -> str:
    """The stand-in for WeixinJSBridge at ``base_url`` (the mount point) for these params."""
    fields = {k: jsapi_params[k] for k in (*JSAPI_FIELDS, "paySign")}
    if redirect_url:
        fields["redirect_url"] = redirect_url
    return f"{base_url.rstrip('/')}/jsapi?{urlencode(fields)}"


def pay_sign_message(params: dict[str, str]) -> bytes:
    """What paySign signs (API v3, signType RSA): appId, timeStamp, nonceStr, package."""
    lines = (params["appId"], params["timeStamp"], params["nonceStr"], params["package"])
    return "".join(line + "\n" for line in lines).encode()


def verify_pay_sign(public_key: rsa.RSAPublicKey, params: dict[str, str], pay_sign: str) -> bool:
    """Whether ``pay_sign`` is the merchant's RSA-SHA256 signature over the params."""
    try:
        public_key.verify(
            base64.b64decode(pay_sign, validate=True),
            pay_sign_message(params),
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def _load_public_key(path: Path) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"{path} is not an RSA public key")
    return key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_blueprint(store: SandboxStore, config: SandboxConfig) -> Blueprint:
    """The sandbox's WeChat web OAuth and WeixinJSBridge stand-in; mount at /sandbox/weixin."""
    blueprint = Blueprint("sandbox_weixin", __name__)
    merchant_key = _load_public_key(config.merchant_public_key_path)
    with store.connect() as conn:
        conn.executescript(SCHEMA)

    # -- open.weixin.qq.com: the authorisation page ---------------------------------------
    @blueprint.get("/connect/oauth2/authorize")
    def authorize() -> Response:
        problem = _authorize_problem(config, request.args)
        if problem:
            return _page("微信网页授权（沙箱）WeChat authorisation (sandbox)", problem, status=400)
        args = request.args
        scope = args["scope"]
        body = f"""<p>公众号 AppID: {html.escape(config.appid)}<br>
授权范围 Scope: {html.escape(scope)}<br>
回调域名 Redirect to: {html.escape(urlsplit(args["redirect_uri"]).netloc)}</p>
<p class="note">真实微信对 snsapi_base 静默授权，不显示本页。
Real WeChat skips this page for snsapi_base (silent).</p>
<form method="post" action="{html.escape(url_for(".authorize_answer"))}">
<input type="hidden" name="appid" value="{html.escape(args["appid"])}">
<input type="hidden" name="redirect_uri" value="{html.escape(args["redirect_uri"])}">
<input type="hidden" name="response_type" value="code">
<input type="hidden" name="scope" value="{html.escape(scope)}">
<input type="hidden" name="state" value="{html.escape(args.get("state", ""))}">
<label for="user">沙箱微信用户 Sandbox WeChat user</label>
<input id="user" name="user" value="resident" maxlength="32" pattern="[A-Za-z0-9_.\\-]+">
<button type="submit" name="action" value="allow" class="pay">允许 Allow</button>
<button type="submit" name="action" value="deny">拒绝 Deny</button>
</form>"""
        return _page("微信网页授权（沙箱）WeChat authorisation (sandbox)", body)

    @blueprint.post("/connect/oauth2/authorize")
    def authorize_answer() -> BaseResponse:
        form = request.form
        problem = _authorize_problem(config, form)
        if problem:
            return _page("微信网页授权（沙箱）WeChat authorisation (sandbox)", problem, status=400)
        back: dict[str, str] = {}
        if form.get("action") == "allow":
            user = form.get("user", "").strip() or "resident"
            if not USER_NAME.fullmatch(user):
                return _page(
                    "微信网页授权（沙箱）", "用户名 1-32 个字母数字 Bad user name", status=400
                )
            code = secrets.token_hex(16)
            with store.connect() as conn:
                conn.execute(
                    "INSERT INTO weixin_oauth_code (code, appid, openid, scope, expires_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (
                        code,
                        config.appid,
                        sandbox_openid(config, user),
                        form["scope"],
                        (_now() + CODE_LIFETIME).isoformat(),
                    ),
                )
            back["code"] = code
        # refused: WeChat comes back with the state and no code
        back["state"] = form.get("state", "")
        return redirect(_with_query(form["redirect_uri"], back), code=302)

    # -- api.weixin.qq.com: code → openid -------------------------------------------------
    @blueprint.get("/sns/oauth2/access_token")
    def access_token() -> Response:
        args = request.args
        if args.get("grant_type") != "authorization_code":
            return _wechat_error(40002, "invalid grant_type")
        if args.get("appid") != config.appid:
            return _wechat_error(40013, "invalid appid")
        if not hmac.compare_digest(
            args.get("secret", "").encode("utf-8", "replace"), config.app_secret.encode()
        ):
            return _wechat_error(40125, "invalid appsecret")
        code = args.get("code", "")
        now = _now()
        with store.connect() as conn:
            row = conn.execute(
                "SELECT appid, openid, scope, expires_at, used_at FROM weixin_oauth_code"
                " WHERE code = ?",
                (code,),
            ).fetchone()
            if row is None or row["appid"] != config.appid:
                return _wechat_error(40029, "invalid code")
            if row["used_at"] is not None:
                return _wechat_error(40163, "code been used")
            if dt.datetime.fromisoformat(row["expires_at"]) <= now:
                return _wechat_error(40029, "invalid code (expired)")
            used = conn.execute(
                "UPDATE weixin_oauth_code SET used_at = ? WHERE code = ? AND used_at IS NULL",
                (now.isoformat(), code),
            )
            if used.rowcount != 1:  # exchanged by a concurrent request
                return _wechat_error(40163, "code been used")
        return _json(
            {
                "access_token": secrets.token_urlsafe(48),
                "expires_in": 7200,
                "refresh_token": secrets.token_urlsafe(48),
                "openid": row["openid"],
                "scope": row["scope"],
            }
        )

    # -- the WeChat app: WeixinJSBridge getBrandWCPayRequest ----------------------------
    @blueprint.get("/jsapi")
    def jsapi() -> BaseResponse:
        params = {k: request.args.get(k, "") for k in JSAPI_FIELDS}
        package = params["package"]
        prepay_id = package.removeprefix("prepay_id=")
        trade = (
            store.trade_by_no(prepay_id[2:])  # the v3 sandbox: prepay_id = "wx" + trade_no
            if package.startswith("prepay_id=wx")
            else None
        )
        if (
            trade is None
            or trade["provider"] != PAY_PROVIDER
            or trade["extra"].get("trade_type") != "JSAPI"
            or params["appId"] != config.appid
            or params["signType"] != "RSA"
            or not verify_pay_sign(merchant_key, params, request.args.get("paySign", ""))
        ):
            body = (
                "<p><strong>get_brand_wcpay_request:fail</strong></p>"
                "<p>支付验证签名失败 paySign, appId or prepay_id does not verify</p>"
            )
            return _page("微信支付（沙箱）WeChat Pay (sandbox)", body, status=400)
        return redirect(
            url_for(
                "sandbox_wechat_v3.cashier",
                prepay_id=prepay_id,
                redirect_url=_http_url(request.args.get("redirect_url", "")),
            ),
            code=303,
        )

    return blueprint


def _authorize_problem(config: SandboxConfig, args: Any) -> str:
    """Why WeChat would refuse this authorisation request, or "" if it would not."""
    if args.get("appid") != config.appid:
        return "appid 参数错误 The appid is not this sandbox's 公众号"
    if args.get("response_type") != "code":
        return "response_type 须为 code"
    if args.get("scope") not in SCOPES:
        return "scope 参数错误 Scope must be snsapi_base or snsapi_userinfo"
    state = args.get("state", "")
    if len(state.encode()) > 128 or not re.fullmatch(r"[A-Za-z0-9]*", state):
        return "state 最多 128 字节，a-zA-Z0-9"
    target = urlsplit(args.get("redirect_uri", ""))
    if target.scheme not in {"http", "https"} or not target.netloc:
        return "redirect_uri 参数错误"
    if config.registered_domain and target.netloc != config.registered_domain:
        return (
            "redirect_uri 域名与后台配置不一致，错误码 10003 "
            f"(registered: {html.escape(config.registered_domain)})"
        )
    return ""


def _with_query(url: str, extra: dict[str, str]) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(extra)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def _http_url(url: str) -> str:
    return url if urlsplit(url).scheme in {"http", "https"} else ""


def _json(payload: dict[str, Any]) -> Response:
    body = json.dumps(payload, ensure_ascii=False).encode()
    return Response(body, status=200, content_type="application/json; charset=utf-8")


def _wechat_error(errcode: int, errmsg: str) -> Response:
    """WeChat answers API errors with HTTP 200 and errcode/errmsg."""
    return _json({"errcode": errcode, "errmsg": errmsg})


def _page(title: str, body: str, *, status: int = 200) -> Response:
    """A bare sandbox page; ``body`` is HTML made by this module (values escaped)."""
    page = f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:28rem;margin:1rem auto;padding:0 1rem}}
label{{display:block;margin-top:1rem}}input{{font-size:1.1rem;padding:.5rem;width:100%}}
button{{display:block;width:100%;font-size:1.2rem;padding:.8rem;margin:.5rem 0}}
.pay{{background:#07c160;color:#fff;border:0}}.note{{color:#777}}</style></head>
<body><h1>{html.escape(title)}</h1>
{body}
<p class="note"><small>沙箱页面，不是真实的微信 Sandbox page, not the real WeChat.</small></p>
</body></html>"""
    return Response(page, status=status, content_type="text/html; charset=utf-8")


__all__ = [
    "SandboxConfig",
    "create_blueprint",
    "jsapi_standin_url",
    "sandbox_app_secret",
    "sandbox_openid",
    "verify_pay_sign",
]
