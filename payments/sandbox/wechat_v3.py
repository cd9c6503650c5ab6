"""A local WeChat Pay API v3 gateway: the calls Ranqi uses, signed as WeChat signs them.

Mounted by the portal at ``/sandbox/wechat`` in development only. It checks the
merchant's ``Authorization: WECHATPAY2-SHA256-RSA2048 ...`` signature with the merchant
public key, signs every answer with its own platform key (the "wechatpay public key"
mode: ``Wechatpay-Serial`` is a ``PUB_KEY_ID_...``), and sends notifies whose resource
is AES-256-GCM encrypted with the APIv3 key. A cashier page stands in for the WeChat
app: 支付 Pay / 取消 Cancel.

Simplifications, on purpose: ``notify_url`` may be http; a refund succeeds at once
(status SUCCESS, no REFUND.SUCCESS notify); bills are available for today too and are
built from the store when asked; fees are zero; one merchant (appid + mchid) per
sandbox; prepay_id is "wx" + the transaction_id so the cashier can find the trade.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import fcntl
import functools
import gzip
import hashlib
import hmac
import html
import io
import json
import os
import re
import secrets
import string
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from flask import Blueprint, Response, request, url_for

from payments.sandbox.store import SandboxStore
from payments.wechat_v3 import WechatV3Config

PROVIDER = "wechat"
#: WeChat Pay v3's notify retry waits after each failed delivery: 15s/15s/30s/3m/10m/20m/
#: 30m/30m/30m/60m/3h/3h/3h/6h/6h (total 24h4m), from the 支付通知 API documentation
SCHEDULE: list[float] = [
    15,
    15,
    30,
    180,
    600,
    1200,
    1800,
    1800,
    1800,
    3600,
    10800,
    10800,
    10800,
    21600,
    21600,
]
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
CHINA = dt.timezone(dt.timedelta(hours=8))
#: how far a merchant request's timestamp may be from the gateway's clock
REQUEST_MAX_SKEW = dt.timedelta(minutes=5)

TRADE_STATE = {  # the store's status → WeChat's trade_state and its description
    "pending": ("NOTPAY", "订单未支付"),
    "paid": ("SUCCESS", "支付成功"),
    "refunded": ("REFUND", "转入退款"),
    "closed": ("CLOSED", "订单已关闭"),
}
TRADE_TYPE = {"jsapi": "JSAPI", "h5": "MWEB", "native": "NATIVE"}

#: the bill's header and summary lines, verbatim as WeChat writes them
BILL_HEADER = (  # noqa: SIM905
    "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
    "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
    "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,"
    "费率备注"
).split(",")
BILL_SUMMARY_HEADER = (  # noqa: SIM905
    "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额"
).split(",")


def accepted(status: int, body: bytes) -> bool:
    """WeChat Pay v3 counts a notify as received on HTTP 200 or 204, whatever the body."""
    return status in (200, 204)


# keys ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SandboxConfig:
    """The sandbox gateway's merchant and keys (all by file path)."""

    appid: str
    mchid: str
    merchant_public_key_path: Path  #: verifies the merchant's Authorization signatures
    merchant_cert_serial_no: str
    platform_private_key_path: Path  #: the sandbox's own key: signs answers and notifies
    wechatpay_public_key_id: str  #: sent as Wechatpay-Serial
    apiv3_key_path: Path  #: encrypts notify resources
    #: base URL the payer's browser reaches the sandbox at; "" = the request's own host
    public_base_url: str = ""


@dataclass(frozen=True)
class SandboxKeys:
    """Key files and ids made by :func:`ensure_sandbox_keys`, for both sides."""

    appid: str
    mchid: str
    merchant_private_key_path: Path
    merchant_public_key_path: Path
    merchant_cert_serial_no: str
    platform_private_key_path: Path
    wechatpay_public_key_path: Path  #: what the merchant trusts
    wechatpay_public_key_id: str
    apiv3_key_path: Path

    def provider_config(self, api_base_url: str, notify_url: str = "") -> WechatV3Config:
        """The adapter's config pointing at the sandbox mounted at ``api_base_url``."""
        return WechatV3Config(
            appid=self.appid,
            mchid=self.mchid,
            merchant_private_key_path=self.merchant_private_key_path,
            merchant_cert_serial_no=self.merchant_cert_serial_no,
            apiv3_key_path=self.apiv3_key_path,
            wechatpay_public_key_path=self.wechatpay_public_key_path,
            wechatpay_public_key_id=self.wechatpay_public_key_id,
            api_base_url=api_base_url,
            notify_url=notify_url,
        )

    def sandbox_config(self, public_base_url: str = "") -> SandboxConfig:
        """The gateway's own config."""
        return SandboxConfig(
            appid=self.appid,
            mchid=self.mchid,
            merchant_public_key_path=self.merchant_public_key_path,
            merchant_cert_serial_no=self.merchant_cert_serial_no,
            platform_private_key_path=self.platform_private_key_path,
            wechatpay_public_key_id=self.wechatpay_public_key_id,
            apiv3_key_path=self.apiv3_key_path,
            public_base_url=public_base_url,
        )


def ensure_sandbox_keys(directory: Path | str) -> SandboxKeys:
    """Make (first time) or read the sandbox's key pairs, APIv3 key and ids in ``directory``.

    Safe when several workers start at once: the first one generates under a file lock.
    """
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    ids_path = folder / "ids.json"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ids_path.exists():
            for name in ("merchant", "platform"):
                key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
                _write(
                    folder / f"{name}_private_key.pem",
                    key.private_bytes(
                        serialization.Encoding.PEM,
                        serialization.PrivateFormat.PKCS8,  # what wechatpayv3 loads
                        serialization.NoEncryption(),
                    ),
                    private=True,
                )
                _write(
                    folder
                    / (
                        "wechatpay_public_key.pem"
                        if name == "platform"
                        else f"{name}_public_key.pem"
                    ),
                    key.public_key().public_bytes(
                        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                    ),
                )
            alphabet = string.ascii_letters + string.digits
            apiv3_key = "".join(secrets.choice(alphabet) for _ in range(32))
            _write(folder / "apiv3_key.txt", apiv3_key.encode(), private=True)
            ids = {
                "appid": "wx" + secrets.token_hex(8),
                "mchid": "19" + "".join(secrets.choice(string.digits) for _ in range(8)),
                "merchant_cert_serial_no": secrets.token_hex(20).upper(),
                "wechatpay_public_key_id": "PUB_KEY_ID_"
                + "".join(secrets.choice(string.digits) for _ in range(32)),
            }
            _write(ids_path, json.dumps(ids, indent=2).encode())
        ids = json.loads(ids_path.read_text(encoding="utf-8"))
    return SandboxKeys(
        appid=ids["appid"],
        mchid=ids["mchid"],
        merchant_private_key_path=folder / "merchant_private_key.pem",
        merchant_public_key_path=folder / "merchant_public_key.pem",
        merchant_cert_serial_no=ids["merchant_cert_serial_no"],
        platform_private_key_path=folder / "platform_private_key.pem",
        wechatpay_public_key_path=folder / "wechatpay_public_key.pem",
        wechatpay_public_key_id=ids["wechatpay_public_key_id"],
        apiv3_key_path=folder / "apiv3_key.txt",
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Write a file whole (temp file + rename), private keys readable by the owner only."""
    temp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    os.replace(temp, path)


@functools.lru_cache(maxsize=16)
def _private_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA private key")
    return key


@functools.lru_cache(maxsize=16)
def _public_key(path: Path) -> rsa.RSAPublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError(f"{path} is not an RSA public key")
    return key


# signing and encryption, as WeChat Pay does them -----------------------------------------
def sign_message(key: rsa.RSAPrivateKey, *lines: str) -> str:
    """SHA256-RSA over the lines each followed by "\\n", base64: WeChat's signature scheme."""
    message = "".join(line + "\n" for line in lines).encode()
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def signed_headers(
    config: SandboxConfig, body: bytes, *, at: dt.datetime | None = None
) -> dict[str, str]:
    """Wechatpay-* headers over ``body`` signed with the platform key (answers and notifies)."""
    timestamp = str(int((at or dt.datetime.now(dt.UTC)).timestamp()))
    nonce = secrets.token_hex(16).upper()
    key = _private_key(config.platform_private_key_path)
    return {
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": sign_message(key, timestamp, nonce, body.decode()),
        "Wechatpay-Timestamp": timestamp,
        "Wechatpay-Serial": config.wechatpay_public_key_id,
        "Wechatpay-Signature-Type": SIGNATURE_TYPE,
    }


def encrypt_resource(apiv3_key: str, plaintext: str, associated_data: str) -> dict[str, str]:
    """An AEAD_AES_256_GCM resource as WeChat puts it in notifies."""
    nonce = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(12))
    sealed = AESGCM(apiv3_key.encode()).encrypt(
        nonce.encode(), plaintext.encode(), associated_data.encode()
    )
    return {
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": base64.b64encode(sealed).decode(),
        "nonce": nonce,
        "associated_data": associated_data,
    }


def build_notify(
    config: SandboxConfig, transaction: dict[str, Any], *, at: dt.datetime | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a TRANSACTION.SUCCESS notify carrying ``transaction``."""
    moment = at or dt.datetime.now(dt.UTC)
    apiv3_key = config.apiv3_key_path.read_text(encoding="ascii").strip()
    resource = encrypt_resource(
        apiv3_key, json.dumps(transaction, ensure_ascii=False), "transaction"
    )
    envelope = {
        "id": str(uuid.uuid4()),
        "create_time": _rfc3339(moment),
        "resource_type": "encrypt-resource",
        "event_type": "TRANSACTION.SUCCESS",
        "summary": "支付成功",
        "resource": {"original_type": "transaction", **resource},
    }
    body = json.dumps(envelope, ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", "User-Agent": "Mozilla/4.0"}
    headers |= signed_headers(config, body, at=moment)
    return body, headers


def resign_notify(config: SandboxConfig, body: bytes) -> dict[str, str]:
    """Fresh headers for a retry: WeChat signs every delivery with the time it is sent.

    The store keeps the headers of the first attempt; a retry later than five minutes
    with those would be (rightly) refused as stale by the merchant.
    """
    headers = {"Content-Type": "application/json", "User-Agent": "Mozilla/4.0"}
    return headers | signed_headers(config, body)


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(CHINA).isoformat(timespec="seconds")


def _stored_time(text: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(text) if text else None


# the blueprint -------------------------------------------------------------------------
class ApiError(Exception):
    """A WeChat-style error answer: HTTP status, code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def create_blueprint(store: SandboxStore, config: SandboxConfig) -> Blueprint:
    """The sandbox gateway: v3 API, cashier page and test hook; mount at /sandbox/wechat."""
    blueprint = Blueprint("sandbox_wechat_v3", __name__, url_prefix="/sandbox/wechat")
    merchant_key = _public_key(config.merchant_public_key_path)
    apiv3_key = config.apiv3_key_path.read_text(encoding="ascii").strip()

    def is_api() -> bool:
        return "/v3/" in request.path

    @blueprint.before_request
    def check_authorization() -> Response | None:
        if not is_api():
            return None
        try:
            _verify_merchant(config, merchant_key)
        except ApiError as error:
            return _error(error)
        return None

    @blueprint.after_request
    def sign_answer(response: Response) -> Response:
        # the bill file is not signed, as at WeChat: its SHA1 came in the signed tradebill answer
        if is_api() and request.endpoint != "sandbox_wechat_v3.bill_file":
            response.headers.update(signed_headers(config, response.get_data()))
            response.headers["Request-ID"] = str(uuid.uuid4())
        return response

    @blueprint.errorhandler(ApiError)
    def api_error(error: ApiError) -> Response:
        return _error(error)

    # API: prepay, query, close, refund, bill -----------------------------------------
    @blueprint.post("/v3/pay/transactions/<kind>")
    def prepay(kind: str) -> Response:
        if kind not in TRADE_TYPE:
            raise ApiError(404, "NOT_FOUND", f"no such API: {kind}")
        data = _body()
        if data.get("appid") != config.appid or data.get("mchid") != config.mchid:
            raise ApiError(400, "APPID_MCHID_NOT_MATCH", "appid和mch_id不匹配")
        order_no = _field(data, "out_trade_no", str)
        if not re.fullmatch(r"[A-Za-z0-9_\-*|]{6,32}", order_no):
            raise ApiError(400, "PARAM_ERROR", "out_trade_no: 6-32 位字母数字_-|*")
        description = _field(data, "description", str)
        if not description or len(description) > 127:
            raise ApiError(400, "PARAM_ERROR", "description: 1-127 个字符")
        notify_url = _field(data, "notify_url", str)
        if not notify_url.startswith(("https://", "http://")):
            raise ApiError(400, "PARAM_ERROR", "notify_url 须为 URL")
        amount = _field(data, "amount", dict)
        total = amount.get("total")
        if isinstance(total, bool) or not isinstance(total, int) or total <= 0:
            raise ApiError(400, "PARAM_ERROR", "amount.total 须为正整数（分）")
        if amount.get("currency", "CNY") != "CNY":
            raise ApiError(400, "PARAM_ERROR", "amount.currency 只支持 CNY")
        extra: dict[str, Any] = {"trade_type": TRADE_TYPE[kind]}
        if kind == "jsapi":
            payer = data.get("payer")
            if not isinstance(payer, dict) or not payer.get("openid"):
                raise ApiError(400, "PARAM_ERROR", "JSAPI 须有 payer.openid")
            extra["openid"] = str(payer["openid"])
        if kind == "h5":
            scene = data.get("scene_info")
            if (
                not isinstance(scene, dict)
                or not scene.get("payer_client_ip")
                or not (isinstance(scene.get("h5_info"), dict) and scene["h5_info"].get("type"))
            ):
                raise ApiError(
                    400, "PARAM_ERROR", "H5 须有 scene_info.payer_client_ip 与 h5_info.type"
                )
        if "time_expire" in data:
            try:
                expires = dt.datetime.fromisoformat(_field(data, "time_expire", str))
            except ValueError as error:
                raise ApiError(400, "PARAM_ERROR", "time_expire 格式错误") from error
            if expires.tzinfo is None:
                raise ApiError(400, "PARAM_ERROR", "time_expire 须带时区")
            if expires <= dt.datetime.now(dt.UTC):
                raise ApiError(400, "PARAM_ERROR", "time_expire 已过 time_expire has passed")
            extra["time_expire"] = expires.astimezone(dt.UTC).isoformat()
        trade_no = "4200" + "".join(secrets.choice(string.digits) for _ in range(24))
        trade = store.create_trade(
            provider=PROVIDER,
            order_no=order_no,
            trade_no=trade_no,
            app_id=config.appid,
            merchant_id=config.mchid,
            amount=total,
            subject=description,
            status="pending",
            notify_url=notify_url,
            extra=extra,
        )
        trade = _current(store, trade)
        if trade["amount"] != total:
            raise ApiError(400, "INVALID_REQUEST", "201 商户订单号重复 out_trade_no reused")
        if trade["status"] in ("paid", "refunded"):
            raise ApiError(400, "ORDERPAID", "该订单已支付 order already paid")
        if trade["status"] == "closed":
            raise ApiError(400, "ORDER_CLOSED", "订单已关闭 order closed")
        prepay_id = "wx" + trade["trade_no"]
        cashier = _cashier_url(config, prepay_id)
        if kind == "jsapi":
            return _json({"prepay_id": prepay_id})
        if kind == "h5":
            return _json({"h5_url": cashier})
        return _json({"code_url": cashier})

    @blueprint.get("/v3/pay/transactions/out-trade-no/<order_no>")
    def query(order_no: str) -> Response:
        _check_mchid(config, request.args.get("mchid"))
        return _json(_transaction(_trade_or_404(store, order_no)))

    @blueprint.get("/v3/pay/transactions/id/<trade_no>")
    def query_by_id(trade_no: str) -> Response:
        _check_mchid(config, request.args.get("mchid"))
        found = store.trade_by_no(trade_no)
        if found is None or found["provider"] != PROVIDER:
            raise ApiError(404, "ORDER_NOT_EXIST", "订单不存在")
        return _json(_transaction(_current(store, found)))

    @blueprint.post("/v3/pay/transactions/out-trade-no/<order_no>/close")
    def close(order_no: str) -> Response:
        _check_mchid(config, _body().get("mchid"))
        trade = _trade_or_404(store, order_no)
        if trade["status"] in ("paid", "refunded"):
            raise ApiError(400, "ORDERPAID", "订单已支付 order already paid")
        store.set_status(PROVIDER, order_no, "closed", only_from=("pending",))
        return Response(b"", status=204)

    @blueprint.post("/v3/refund/domestic/refunds")
    def refund() -> Response:
        data = _body()
        refund_no = _field(data, "out_refund_no", str)
        if data.get("out_trade_no"):
            trade = _trade_or_404(store, str(data["out_trade_no"]))
        else:
            found = store.trade_by_no(_field(data, "transaction_id", str))
            if found is None or found["provider"] != PROVIDER:
                raise ApiError(404, "RESOURCE_NOT_EXISTS", "订单不存在")
            trade = found
        amount = _field(data, "amount", dict)
        wanted, total = amount.get("refund"), amount.get("total")
        if not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (wanted, total)
        ):
            raise ApiError(400, "PARAM_ERROR", "amount.refund / amount.total 须为正整数（分）")
        assert isinstance(wanted, int) and isinstance(total, int)
        if trade["status"] not in ("paid", "refunded"):
            raise ApiError(400, "INVALID_REQUEST", "订单未支付，不能退款 trade not paid")
        paid = _paid_amount(trade)
        if total != paid:
            raise ApiError(400, "PARAM_ERROR", "订单金额 amount.total 与原订单不一致")
        refundable = paid - store.refunded_total(PROVIDER, trade["order_no"])
        # a repeated out_refund_no is answered with the refund it already made
        if not _refund_exists(store, refund_no) and wanted > refundable:
            raise ApiError(
                400,
                "INVALID_REQUEST",
                "申请退款金额超过订单可退金额 refund exceeds the refundable amount",
            )
        record = store.add_refund(PROVIDER, refund_no, trade["order_no"], wanted)
        if record["order_no"] != trade["order_no"]:
            raise ApiError(400, "INVALID_REQUEST", "out_refund_no 已用于其他订单")
        store.set_status(PROVIDER, trade["order_no"], "refunded", only_from=("paid",))
        created = _rfc3339(dt.datetime.fromisoformat(record["created_at"]))
        return _json(
            {
                "refund_id": _refund_id(refund_no),
                "out_refund_no": refund_no,
                "transaction_id": trade["trade_no"],
                "out_trade_no": trade["order_no"],
                "channel": "ORIGINAL",
                "user_received_account": "支付用户零钱",
                "create_time": created,
                "success_time": created,
                "status": "SUCCESS",
                "funds_account": "AVAILABLE",
                "amount": {
                    "total": paid,
                    "refund": record["amount"],
                    "payer_total": paid,
                    "payer_refund": record["amount"],
                    "settlement_total": paid,
                    "settlement_refund": record["amount"],
                    "discount_refund": 0,
                    "currency": "CNY",
                    "refund_fee": 0,
                },
            }
        )

    @blueprint.get("/v3/bill/tradebill")
    def trade_bill() -> Response:
        try:
            day = dt.date.fromisoformat(request.args.get("bill_date", ""))
        except ValueError as error:
            raise ApiError(400, "PARAM_ERROR", "bill_date 格式为 YYYY-MM-DD") from error
        if request.args.get("bill_type", "ALL") != "ALL":
            raise ApiError(400, "PARAM_ERROR", "沙箱只提供 bill_type=ALL")
        gzip_wanted = request.args.get("tar_type") == "GZIP"
        bill = _bill(store, config, day)
        if bill is None:
            raise ApiError(400, "NO_STATEMENT_EXIST", "账单文件不存在 no trades on that day")
        token = _bill_token(apiv3_key, day, gzip_wanted)
        return _json(
            {
                "hash_type": "SHA1",
                "hash_value": hashlib.sha1(bill).hexdigest(),  # noqa: S324 - WeChat's digest
                "download_url": _external(config, "sandbox_wechat_v3.bill_file", token=token),
            }
        )

    @blueprint.get("/v3/billdownload/file")
    def bill_file() -> Response:
        token = request.args.get("token", "")
        parsed = _read_bill_token(apiv3_key, token)
        if parsed is None:
            raise ApiError(400, "PARAM_ERROR", "token 无效")
        day, gzip_wanted = parsed
        bill = _bill(store, config, day) or b""
        if gzip_wanted:
            return Response(gzip.compress(bill, mtime=0), mimetype="application/octet-stream")
        return Response(bill, mimetype="text/plain", content_type="text/plain; charset=utf-8")

    # the cashier: what the WeChat app would show -------------------------------------
    @blueprint.get("/cashier")
    def cashier() -> Response:
        trade = _trade_for_prepay(store, request.args.get("prepay_id", ""))
        return _page(config, trade, request.args.get("redirect_url", ""), message="")

    @blueprint.post("/cashier")
    def cashier_answer() -> Response:
        trade = _trade_for_prepay(store, request.form.get("prepay_id", ""))
        redirect_url = request.form.get("redirect_url", "")
        if request.form.get("action") == "pay":
            if _pay(store, config, trade, None):
                message = "支付成功 Paid"
            else:
                message = "无法支付：订单已支付或已关闭 Cannot pay: already paid or closed"
        else:
            message = "已取消，订单未支付 Cancelled, not paid"
        return _page(config, _current(store, trade), redirect_url, message=message)

    @blueprint.post("/_test/pay")
    def test_pay() -> Response:
        """SANDBOX ONLY: pay a trade as if at the cashier, optionally with another amount."""
        data = request.get_json(silent=True)
        if not isinstance(data, dict) or not isinstance(data.get("order_no"), str):
            return _json({"code": "PARAM_ERROR", "message": "order_no required"}, 400)
        trade = store.trade(PROVIDER, data["order_no"])
        if trade is None:
            return _json({"code": "ORDER_NOT_EXIST", "message": "订单不存在"}, 404)
        amount = data.get("amount")
        if amount is not None and (
            isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0
        ):
            return _json({"code": "PARAM_ERROR", "message": "amount: positive fen"}, 400)
        if not _pay(store, config, _current(store, trade), amount):
            return _json({"code": "ORDER_NOT_PAYABLE", "message": "already paid or closed"}, 409)
        return _json({"order_no": trade["order_no"], "transaction_id": trade["trade_no"]})

    return blueprint


# request checks --------------------------------------------------------------------------
AUTH_FIELD = re.compile(r'(\w+)="([^"]*)"')


def _verify_merchant(config: SandboxConfig, merchant_key: rsa.RSAPublicKey) -> None:
    """Check the Authorization header as WeChat does; ApiError(401 SIGN_ERROR) if wrong."""
    header = request.headers.get("Authorization", "")
    scheme, _, rest = header.partition(" ")
    if scheme != SIGNATURE_TYPE:
        raise ApiError(401, "SIGN_ERROR", "Authorization 须为 WECHATPAY2-SHA256-RSA2048")
    fields = dict(AUTH_FIELD.findall(rest))
    if fields.get("mchid") != config.mchid:
        raise ApiError(401, "SIGN_ERROR", "mchid 与签名不符")
    if fields.get("serial_no", "").upper() != config.merchant_cert_serial_no.upper():
        raise ApiError(401, "SIGN_ERROR", "商户证书序列号 serial_no 不正确")
    timestamp, nonce = fields.get("timestamp", ""), fields.get("nonce_str", "")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 10) or not nonce:
        raise ApiError(401, "SIGN_ERROR", "缺少 timestamp / nonce_str")
    sent = dt.datetime.fromtimestamp(int(timestamp), dt.UTC)
    if abs(dt.datetime.now(dt.UTC) - sent) > REQUEST_MAX_SKEW:
        raise ApiError(401, "SIGN_ERROR", "timestamp 超出 5 分钟")
    # the path as the merchant signed it: from /v3/ on, with its raw query string
    raw = request.environ.get("RAW_URI") or request.environ.get("REQUEST_URI") or request.full_path
    path = raw[raw.index("/v3/") :].rstrip("?") if "/v3/" in raw else request.path
    message = "".join(
        line + "\n"
        for line in (request.method, path, timestamp, nonce, request.get_data(as_text=True))
    ).encode()
    try:
        merchant_key.verify(
            base64.b64decode(fields.get("signature", ""), validate=True),
            message,
            padding.PKCS1v15(),
            hashes.SHA256(),
        )
    except (InvalidSignature, ValueError) as error:
        raise ApiError(401, "SIGN_ERROR", "签名错误 signature does not verify") from error


def _check_mchid(config: SandboxConfig, mchid: object) -> None:
    if mchid != config.mchid:
        raise ApiError(400, "PARAM_ERROR", "mchid 不正确")


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise ApiError(400, "PARAM_ERROR", "请求体须为 JSON 对象")
    return data


def _field(data: dict[str, Any], name: str, kind: type) -> Any:
    value = data.get(name)
    if not isinstance(value, kind):
        raise ApiError(400, "PARAM_ERROR", f"缺少参数 {name}")
    return value


# answers ---------------------------------------------------------------------------------
def _json(payload: dict[str, Any], status: int = 200) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status=status, content_type="application/json; charset=utf-8")


def _error(error: ApiError) -> Response:
    return _json({"code": error.code, "message": error.message}, error.status)


def _external(config: SandboxConfig, endpoint: str, **values: Any) -> str:
    if config.public_base_url:
        relative = url_for(endpoint, **values)
        return config.public_base_url.rstrip("/") + relative[relative.index("/", 1) :]
    return url_for(endpoint, _external=True, **values)


def _cashier_url(config: SandboxConfig, prepay_id: str) -> str:
    return _external(config, "sandbox_wechat_v3.cashier", prepay_id=prepay_id)


# trades ----------------------------------------------------------------------------------
def _current(store: SandboxStore, trade: dict[str, Any]) -> dict[str, Any]:
    """The trade after applying its expiry: an unpaid trade past time_expire is closed."""
    expires = _stored_time(trade["extra"].get("time_expire"))
    if trade["status"] == "pending" and expires and expires <= dt.datetime.now(dt.UTC):
        store.set_status(PROVIDER, trade["order_no"], "closed", only_from=("pending",))
        return store.trade(PROVIDER, trade["order_no"]) or trade
    return trade


def _trade_or_404(store: SandboxStore, order_no: str) -> dict[str, Any]:
    trade = store.trade(PROVIDER, order_no)
    if trade is None:
        raise ApiError(404, "ORDER_NOT_EXIST", "订单不存在")
    return _current(store, trade)


def _trade_for_prepay(store: SandboxStore, prepay_id: str) -> dict[str, Any]:
    trade = store.trade_by_no(prepay_id[2:]) if prepay_id.startswith("wx") else None
    if trade is None or trade["provider"] != PROVIDER:
        raise ApiError(404, "ORDER_NOT_EXIST", "订单不存在 no such prepay_id")
    return _current(store, trade)


def _paid_amount(trade: dict[str, Any]) -> int:
    return int(trade["extra"].get("paid_amount", trade["amount"]))


def _transaction(trade: dict[str, Any]) -> dict[str, Any]:
    """The transaction JSON of query answers and notify resources."""
    state, description = TRADE_STATE[trade["status"]]
    paid = trade["status"] in ("paid", "refunded")
    total = _paid_amount(trade) if paid else trade["amount"]
    data: dict[str, Any] = {
        "appid": trade["app_id"],
        "mchid": trade["merchant_id"],
        "out_trade_no": trade["order_no"],
        "trade_state": state,
        "trade_state_desc": description,
        "attach": "",
        "amount": {"total": total, "currency": "CNY", "payer_currency": "CNY"},
    }
    if paid:
        data |= {
            "transaction_id": trade["trade_no"],
            "trade_type": trade["extra"]["trade_type"],
            "bank_type": "OTHERS",
            "success_time": _rfc3339(dt.datetime.fromisoformat(trade["paid_at"])),
            "payer": {"openid": trade["extra"].get("openid", "o" + trade["trade_no"][-16:])},
        }
        data["amount"]["payer_total"] = total
    return data


def _pay(
    store: SandboxStore, config: SandboxConfig, trade: dict[str, Any], amount: int | None
) -> bool:
    """Mark a pending trade paid and queue its notify; False if it was not pending."""
    if trade["status"] != "pending":
        return False
    if amount is not None and amount != trade["amount"]:
        # the test hook's "paid another amount": kept beside the order's own amount
        with store.connect() as conn:
            conn.execute(
                "UPDATE trade SET extra = ? WHERE provider = ? AND order_no = ?",
                (json.dumps(trade["extra"] | {"paid_amount": amount}), PROVIDER, trade["order_no"]),
            )
    if not store.set_status(PROVIDER, trade["order_no"], "paid", only_from=("pending",)):
        return False
    paid = store.trade(PROVIDER, trade["order_no"])
    assert paid is not None
    body, headers = build_notify(config, _transaction(paid))
    store.queue_notify(PROVIDER, paid["order_no"], paid["notify_url"], body, headers)
    return True


def _refund_exists(store: SandboxStore, refund_no: str) -> bool:
    with store.connect() as conn:
        row = conn.execute(
            "SELECT 1 FROM refund WHERE provider = ? AND refund_no = ?", (PROVIDER, refund_no)
        ).fetchone()
        return row is not None


def _refund_id(refund_no: str) -> str:
    digest = int(hashlib.sha256(refund_no.encode()).hexdigest(), 16)
    return "50" + str(digest % 10**27).zfill(27)


# bills -----------------------------------------------------------------------------------
def _bill_token(apiv3_key: str, day: dt.date, gzip_wanted: bool) -> str:
    payload = f"{day.isoformat()}.{int(gzip_wanted)}"
    mac = hmac.new(apiv3_key.encode(), payload.encode(), hashlib.sha256).hexdigest()[:32]
    return f"{payload}.{mac}"


def _read_bill_token(apiv3_key: str, token: str) -> tuple[dt.date, bool] | None:
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        day = dt.date.fromisoformat(parts[0])
    except ValueError:
        return None
    if not hmac.compare_digest(_bill_token(apiv3_key, day, parts[1] == "1"), token):
        return None
    return day, parts[1] == "1"


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _bill(store: SandboxStore, config: SandboxConfig, day: dt.date) -> bytes | None:
    """The day's 交易账单 (ALL) in WeChat's shape: "`"-prefixed CSV, then the summary.

    None when the day has no trades (WeChat then answers NO_STATEMENT_EXIST).
    """
    rows: list[list[str]] = []
    paid_total = refund_total = 0
    trades = sorted(store.trades_on(PROVIDER, day), key=lambda t: (t["paid_at"], t["order_no"]))
    for trade in trades:
        amount = _paid_amount(trade)
        paid_total += amount
        at = dt.datetime.fromisoformat(trade["paid_at"]).astimezone(CHINA)
        rows.append(_bill_line(config, trade, at, "SUCCESS", amount, None))
    refunds = sorted(
        store.refunds_on(PROVIDER, day), key=lambda r: (r["created_at"], r["refund_no"])
    )
    for refund in refunds:
        refunded = store.trade(PROVIDER, refund["order_no"])
        if refunded is None:
            continue
        refund_total += refund["amount"]
        at = dt.datetime.fromisoformat(refund["created_at"]).astimezone(CHINA)
        rows.append(_bill_line(config, refunded, at, "REFUND", _paid_amount(refunded), refund))
    if not rows:
        return None
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(BILL_HEADER)
    writer.writerows(rows)
    writer.writerow(BILL_SUMMARY_HEADER)
    writer.writerow(
        [
            "`" + v
            for v in (
                str(len(rows)),
                _yuan(paid_total),
                _yuan(refund_total),
                "0.00",
                "0.00000",
                _yuan(paid_total),
                _yuan(refund_total),
            )
        ]
    )
    return out.getvalue().encode("utf-8")


def _bill_line(
    config: SandboxConfig,
    trade: dict[str, Any],
    at: dt.datetime,
    state: str,
    amount: int,
    refund: dict[str, Any] | None,
) -> list[str]:
    values = [
        at.strftime("%Y-%m-%d %H:%M:%S"),
        config.appid,
        config.mchid,
        "0",
        "",
        trade["trade_no"],
        trade["order_no"],
        trade["extra"].get("openid", ""),
        trade["extra"].get("trade_type", "NATIVE"),
        state,
        "OTHERS",
        "CNY",
        _yuan(amount) if refund is None else "0.00",
        "0.00",
        _refund_id(refund["refund_no"]) if refund else "0",
        refund["refund_no"] if refund else "0",
        _yuan(refund["amount"]) if refund else "0.00",
        "0.00",
        "ORIGINAL" if refund else "",
        "SUCCESS" if refund else "",
        trade["subject"],
        "",
        "0.00000",
        "0.60%",
        _yuan(amount),
        _yuan(refund["amount"]) if refund else "0.00",
        "",
    ]
    return ["`" + v for v in values]


# the cashier page ------------------------------------------------------------------------
def _page(
    config: SandboxConfig, trade: dict[str, Any], redirect_url: str, *, message: str
) -> Response:
    """The cashier: subject, amount, and a form with 支付 Pay / 取消 Cancel (no JavaScript)."""
    state, description = TRADE_STATE[trade["status"]]
    esc = html.escape
    back = ""
    if message and redirect_url.startswith(("http://", "https://")):
        back = f'<p><a href="{esc(redirect_url)}">返回商户 Back to merchant</a></p>'
    form = ""
    if trade["status"] == "pending":
        form = f"""<form method="post" action="{esc(url_for("sandbox_wechat_v3.cashier_answer"))}">
<input type="hidden" name="prepay_id" value="wx{esc(trade["trade_no"])}">
<input type="hidden" name="redirect_url" value="{esc(redirect_url)}">
<button type="submit" name="action" value="pay" class="pay">支付 Pay</button>
<button type="submit" name="action" value="cancel">取消 Cancel</button>
</form>"""
    page = f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>微信支付沙箱 WeChat Pay sandbox</title>
<style>body{{font-family:sans-serif;max-width:28rem;margin:1rem auto;padding:0 1rem}}
button{{display:block;width:100%;font-size:1.2rem;padding:.8rem;margin:.5rem 0}}
.pay{{background:#07c160;color:#fff;border:0}}.amount{{font-size:2rem}}</style></head>
<body><h1>微信支付（沙箱）<br><small>WeChat Pay (sandbox)</small></h1>
<p>{esc(trade["subject"])}</p>
<p class="amount">¥{_yuan(trade["amount"])}</p>
<p>商户订单号 Order: {esc(trade["order_no"])}<br>商户号 Merchant: {esc(config.mchid)}</p>
<p>状态 Status: {esc(description)} ({state})</p>
{f'<p role="status"><strong>{esc(message)}</strong></p>' if message else ""}
{form}{back}
<p><small>沙箱页面，不会真实扣款 Sandbox page: no real money moves.</small></p>
</body></html>"""
    return Response(page, content_type="text/html; charset=utf-8")
