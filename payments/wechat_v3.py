"""WeChat Pay API v3 adapter on the wechatpayv3 SDK: JSAPI, H5 and Native (QR) payments.

The SDK signs our requests (WECHATPAY2-SHA256-RSA2048 with the merchant key), verifies
the platform's response signatures with the "wechatpay public key" (no platform
certificate download), and verifies and decrypts notifies. What it does not do we do
here: refuse notifies whose Wechatpay-Timestamp is outside five minutes, refuse a
Wechatpay-Serial we do not trust before the SDK would go and fetch certificates, check
appid / mchid, and turn every failure into NotifyRejected or PaymentError.
"""

from __future__ import annotations

import base64
import binascii
import csv
import datetime as dt
import gzip
import hashlib
import hmac
import io
import json
import secrets
import time
import urllib.parse
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, cast

import requests
from wechatpayv3 import WeChatPay, WeChatPayType  # type: ignore[import-untyped]
from wechatpayv3.utils import rsa_verify  # type: ignore[import-untyped]

from payments.base import (
    BillRow,
    Notification,
    NotifyAnswer,
    NotifyRejected,
    NotifyRequest,
    PaymentError,
    PaymentRequest,
    PaymentStart,
    PayScene,
    RefundRequest,
    RefundResult,
    TradeQuery,
    TradeStatus,
)

#: WeChat Pay's API host; the sandbox replaces it with its own URL
DEFAULT_API_BASE_URL = "https://api.mch.weixin.qq.com"
#: a notify whose Wechatpay-Timestamp is further than this from now is refused (replay)
NOTIFY_MAX_SKEW = dt.timedelta(minutes=5)
#: WeChat's limit on `description` (characters)
DESCRIPTION_MAX = 127
SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
CHINA = dt.timezone(dt.timedelta(hours=8))

TRADE_STATES: dict[str, TradeStatus] = {
    "SUCCESS": TradeStatus.paid,
    "REFUND": TradeStatus.refunded,
    "NOTPAY": TradeStatus.pending,
    "USERPAYING": TradeStatus.pending,
    "CLOSED": TradeStatus.closed,
    "REVOKED": TradeStatus.closed,
    "PAYERROR": TradeStatus.failed,
}
REFUND_STATES = {
    "SUCCESS": "succeeded",
    "PROCESSING": "processing",
    "ABNORMAL": "failed",
    "CLOSED": "failed",
}


@dataclass(frozen=True)
class WechatV3Config:
    """A merchant's WeChat Pay v3 settings; keys are named by file path and read once."""

    appid: str  #: 公众号 / 应用 AppID the payments are made under
    mchid: str  #: 商户号
    merchant_private_key_path: Path  #: apiclient_key.pem (PKCS#8 PEM)
    merchant_cert_serial_no: str  #: serial number of the merchant API certificate
    apiv3_key_path: Path  #: file holding the 32-character APIv3 key
    wechatpay_public_key_path: Path  #: 微信支付公钥 (PEM) that signs responses and notifies
    wechatpay_public_key_id: str  #: its id, "PUB_KEY_ID_..." (sent as Wechatpay-Serial)
    api_base_url: str = DEFAULT_API_BASE_URL
    notify_url: str = ""  #: default when a PaymentRequest names none
    timeout: float = 15.0  #: seconds, per HTTP call


# money at the edge -------------------------------------------------------------------
def to_wechat_amount(fen: int) -> int:
    """Our fen to WeChat's `amount.total` (also integer fen); refuses non-positive values."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen <= 0:
        raise PaymentError(f"amount must be a positive number of fen, not {fen!r}", code="amount")
    return fen


def from_wechat_amount(value: object) -> int:
    """WeChat's integer-fen amount (JSON) to our fen; refuses anything but a whole number."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not an amount in fen: {value!r}")
    return value


def bill_yuan_to_fen(text: str) -> int:
    """A bill's yuan figure ("`12.34") to fen, exactly (Decimal); refuses sub-fen values."""
    try:
        yuan = Decimal(text.strip().lstrip("`"))
    except InvalidOperation as error:
        raise ValueError(f"not a yuan amount: {text!r}") from error
    fen = yuan * 100
    if not fen.is_finite() or fen != fen.to_integral_value():
        raise ValueError(f"not a whole number of fen: {text!r}")
    return int(fen)


# times at the edge -------------------------------------------------------------------
def _rfc3339(moment: dt.datetime) -> str:
    """WeChat's time format, in China time: 2018-06-08T10:34:56+08:00."""
    return moment.astimezone(CHINA).isoformat(timespec="seconds")


def _parse_time(text: object) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    moment = dt.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"time without offset: {text!r}")
    return moment.astimezone(dt.UTC)


class WechatV3Provider:
    """WeChat Pay API v3 for Ranqi: payments, notifies, query, close, refund, bill."""

    name = "wechat"

    def __init__(self, config: WechatV3Config) -> None:
        self.config = config
        self._apiv3_key = config.apiv3_key_path.read_text(encoding="ascii").strip()
        if len(self._apiv3_key.encode()) != 32:
            raise ValueError("the APIv3 key must be 32 characters")
        public_key_pem = config.wechatpay_public_key_path.read_text(encoding="ascii")
        self._pay: Any = WeChatPay(
            wechatpay_type=WeChatPayType.NATIVE,
            mchid=config.mchid,
            private_key=config.merchant_private_key_path.read_text(encoding="ascii"),
            cert_serial_no=config.merchant_cert_serial_no,
            appid=config.appid,
            apiv3_key=self._apiv3_key,
            notify_url=config.notify_url or None,
            public_key=public_key_pem,
            public_key_id=config.wechatpay_public_key_id,
            timeout=config.timeout,
        )
        # wechatpayv3 2.0.4 has no parameter for the API host: Core.__init__ hard-codes
        # https://api.mch.weixin.qq.com in `_gate_way`, which request() and download_bill()
        # read. Setting it here, once, is how we point the SDK at the sandbox.
        self._pay._core._gate_way = config.api_base_url.rstrip("/")
        # the same key the SDK verifies with, kept to tell a bad signature from a bad tag
        self._public_key: Any = self._pay._core._public_key

    # calls ---------------------------------------------------------------------------
    def _call(self, what: str, method: str, /, **kwargs: Any) -> tuple[int, Any]:
        """One SDK call; transport or response-signature failures become PaymentError."""
        try:
            code, body = getattr(self._pay, method)(**kwargs)
        except requests.RequestException as error:
            raise PaymentError(f"WeChat Pay {what}: {error}", code="unreachable") from error
        except Exception as error:  # the SDK's bare "failed to verify the signature"
            raise PaymentError(f"WeChat Pay {what}: {error}", code="bad_answer") from error
        return int(code), body

    @staticmethod
    def _json(what: str, code: int, body: Any) -> dict[str, Any]:
        """The JSON of a 2xx answer, or PaymentError with WeChat's own code and message."""
        try:
            data = json.loads(body) if body else {}
        except (TypeError, ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            raise PaymentError(f"WeChat Pay {what}: HTTP {code}, not JSON", code="bad_answer")
        if not 200 <= code < 300:
            raise PaymentError(
                f"WeChat Pay {what}: {data.get('message') or f'HTTP {code}'}",
                code=str(data.get("code") or code),
            )
        return data

    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        """Prepay at WeChat for the scene and say what the payer's device does next."""
        params: dict[str, Any] = {
            "description": request.subject[:DESCRIPTION_MAX],
            "out_trade_no": request.order_no,
            "amount": {"total": to_wechat_amount(request.amount), "currency": "CNY"},
            "notify_url": request.notify_url or self.config.notify_url,
        }
        if request.expires_at is not None:
            params["time_expire"] = _rfc3339(request.expires_at)
        if request.scene is PayScene.jsapi:
            if not request.payer_openid:
                raise PaymentError("JSAPI needs the payer's openid", code="openid")
            params |= {"pay_type": WeChatPayType.JSAPI, "payer": {"openid": request.payer_openid}}
        elif request.scene is PayScene.h5:
            params |= {
                "pay_type": WeChatPayType.H5,
                "scene_info": {
                    "payer_client_ip": request.client_ip,
                    "h5_info": {"type": "Wap"},
                },
            }
        elif request.scene is PayScene.qr:
            params["pay_type"] = WeChatPayType.NATIVE
        else:
            raise PaymentError(f"WeChat Pay v3 has no scene {request.scene}", code="scene")
        data = self._json("prepay", *self._call("prepay", "pay", **params))
        if request.scene is PayScene.jsapi:
            return PaymentStart(jsapi_params=self._jsapi_params(_text(data, "prepay_id")))
        if request.scene is PayScene.h5:
            url = _text(data, "h5_url")
            if request.return_url:  # WeChat's H5 page goes back to redirect_url after paying
                url += "&redirect_url=" + urllib.parse.quote(request.return_url, safe="")
            return PaymentStart(redirect_url=url)
        return PaymentStart(qr_code=_text(data, "code_url"))

    def _jsapi_params(self, prepay_id: str) -> dict[str, str]:
        """The parameters for WeixinJSBridge getBrandWCPayRequest, signed by the merchant key."""
        timestamp = str(int(time.time()))
        nonce = secrets.token_hex(16)
        package = f"prepay_id={prepay_id}"
        pay_sign = self._pay.sign([self.config.appid, timestamp, nonce, package])
        return {
            "appId": self.config.appid,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": str(pay_sign),
        }

    def query(self, order_no: str) -> TradeQuery:
        """The trade's state at WeChat, by our order number."""
        code, body = self._call("query", "query", out_trade_no=order_no)
        if code == 404:
            return TradeQuery(order_no=order_no, status=TradeStatus.unknown)
        data = self._json("query", code, body)
        if data.get("out_trade_no") != order_no or data.get("mchid") != self.config.mchid:
            raise PaymentError("WeChat Pay query answered for another trade", code="bad_answer")
        state = str(data.get("trade_state", ""))
        amount = data.get("amount")
        try:
            total = from_wechat_amount(amount.get("total")) if isinstance(amount, dict) else None
            paid_at = _parse_time(data.get("success_time"))
        except ValueError as error:
            raise PaymentError(f"WeChat Pay query: {error}", code="bad_answer") from error
        return TradeQuery(
            order_no=order_no,
            status=TRADE_STATES.get(state, TradeStatus.unknown),
            amount=total,
            provider_trade_no=data.get("transaction_id") or None,
            paid_at=paid_at,
        )

    def close(self, order_no: str) -> None:
        """Close an unpaid trade at WeChat (204); a paid one is refused with PaymentError."""
        code, body = self._call("close", "close", out_trade_no=order_no)
        if code != 204:
            self._json("close", code, body)  # raises unless 2xx

    def refund(self, request: RefundRequest) -> RefundResult:
        """Refund part or all of a paid trade (POST /v3/refund/domestic/refunds)."""
        params: dict[str, Any] = {
            "out_refund_no": request.refund_no,
            "out_trade_no": request.order_no,
            "amount": {
                "refund": to_wechat_amount(request.refund_amount),
                "total": to_wechat_amount(request.total_amount),
                "currency": "CNY",
            },
        }
        if request.reason:
            params["reason"] = request.reason[:80]
        if request.notify_url:
            params["notify_url"] = request.notify_url
        data = self._json("refund", *self._call("refund", "refund", **params))
        amount = data.get("amount")
        try:
            refunded = (
                from_wechat_amount(amount.get("refund")) if isinstance(amount, dict) else None
            )
        except ValueError as error:
            raise PaymentError(f"WeChat Pay refund: {error}", code="bad_answer") from error
        return RefundResult(
            refund_no=str(data.get("out_refund_no") or request.refund_no),
            status=REFUND_STATES.get(str(data.get("status")), "processing"),
            provider_refund_no=data.get("refund_id") or None,
            amount=refunded,
        )

    def download_bill(self, day: dt.date) -> list[BillRow]:
        """The day's trade bill (交易账单, ALL, GZIP), checked against its SHA1 and parsed."""
        code, body = self._call(
            "trade bill", "trade_bill", bill_date=day.isoformat(), tar_type="GZIP"
        )
        try:
            data = self._json("trade bill", code, body)
        except PaymentError as error:
            if error.code == "NO_STATEMENT_EXIST":  # WeChat's answer for a day without trades
                return []
            raise
        url = _text(data, "download_url")
        code, content = self._call("bill download", "download_bill", url=url)
        if code != 200 or not isinstance(content, bytes):
            raise PaymentError(f"WeChat Pay bill download: HTTP {code}", code=str(code))
        try:
            text_bytes = gzip.decompress(content)
        except (OSError, EOFError) as error:
            raise PaymentError("WeChat Pay bill is not gzip", code="bad_answer") from error
        # the file itself is not signed; its digest came in the signed trade-bill answer
        if str(data.get("hash_type", "")).upper() != "SHA1" or not hmac.compare_digest(
            hashlib.sha1(text_bytes).hexdigest(),  # noqa: S324 - WeChat's own bill digest
            str(data.get("hash_value", "")).lower(),
        ):
            raise PaymentError("WeChat Pay bill does not match its digest", code="bad_answer")
        try:
            return parse_trade_bill(text_bytes.decode("utf-8-sig"))
        except (ValueError, KeyError, IndexError) as error:
            raise PaymentError(f"WeChat Pay bill: {error}", code="bad_answer") from error

    # notifies ------------------------------------------------------------------------
    def parse_notify(self, request: NotifyRequest, *, now: dt.datetime) -> Notification:
        """Verify a payment notify from its raw body and headers; NotifyRejected if untrusted."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        signature = headers.get("wechatpay-signature", "")
        timestamp = headers.get("wechatpay-timestamp", "")
        nonce = headers.get("wechatpay-nonce", "")
        serial = headers.get("wechatpay-serial", "")
        if not (signature and timestamp and nonce and serial):
            raise NotifyRejected("missing Wechatpay-Signature/-Timestamp/-Nonce/-Serial header")
        if headers.get("wechatpay-signature-type", SIGNATURE_TYPE) != SIGNATURE_TYPE:
            raise NotifyRejected("unsupported Wechatpay-Signature-Type")
        # a serial the SDK does not know makes it fetch /v3/certificates: refuse it first
        if serial != self.config.wechatpay_public_key_id:
            raise NotifyRejected(f"Wechatpay-Serial {serial[:40]!r} is not our WeChat Pay key")
        if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > 10:
            raise NotifyRejected("Wechatpay-Timestamp is not a number")
        sent = dt.datetime.fromtimestamp(int(timestamp), dt.UTC)
        if abs(now - sent) > NOTIFY_MAX_SKEW:
            raise NotifyRejected("Wechatpay-Timestamp is more than 5 minutes from now")
        try:
            body_text = request.body.decode("utf-8")
            envelope = json.loads(body_text)
        # UnicodeDecodeError is a ValueError; absurdly deep nesting raises RecursionError
        except (ValueError, RecursionError) as error:
            raise NotifyRejected("body is not UTF-8 JSON") from error
        resource = envelope.get("resource") if isinstance(envelope, dict) else None
        if not isinstance(resource, dict) or envelope.get("resource_type") != "encrypt-resource":
            raise NotifyRejected("body has no encrypted resource")
        if resource.get("algorithm") != "AEAD_AES_256_GCM":
            raise NotifyRejected("resource algorithm is not AEAD_AES_256_GCM")
        fields = [resource.get(k) for k in ("ciphertext", "nonce", "associated_data")]
        if not all(isinstance(f, str) for f in fields) or not fields[0] or not fields[1]:
            raise NotifyRejected("resource lacks ciphertext, nonce or associated_data")
        if not 8 <= len(str(fields[1]).encode()) <= 128:  # AES-GCM would raise on others
            raise NotifyRejected("resource nonce has a bad length")
        try:
            base64.b64decode(str(fields[0]), validate=True)
        except binascii.Error as error:
            raise NotifyRejected("resource ciphertext is not base64") from error
        sdk_headers = {
            "wechatpay-signature": signature,
            "wechatpay-timestamp": timestamp,
            "wechatpay-nonce": nonce,
            "wechatpay-serial": serial,
            "wechatpay-signature-type": SIGNATURE_TYPE,
        }
        try:
            # the SDK's own path: RSA-SHA256 over "timestamp\nnonce\nbody\n", then AES-GCM
            result = self._pay.callback(headers=sdk_headers, body=body_text)
        except Exception as error:  # the SDK raises bare Exception on odd input
            raise NotifyRejected(f"notify could not be verified: {error}") from error
        if not result:
            # callback() answers None both for a bad signature and a bad AES-GCM tag
            if not rsa_verify(timestamp, nonce, body_text, signature, self._public_key):
                raise NotifyRejected("signature does not verify with the WeChat Pay key")
            raise NotifyRejected("resource does not decrypt (AES-GCM tag) with our APIv3 key")
        return self._notification(envelope, cast(dict[str, Any], result).get("resource"))

    def _notification(self, envelope: dict[str, Any], trade: Any) -> Notification:
        """The verified transaction as a Notification, after checking it is ours."""
        if not str(envelope.get("event_type", "")).startswith("TRANSACTION."):
            raise NotifyRejected(f"not a payment notify: {envelope.get('event_type')!r}")
        if not isinstance(trade, dict):
            raise NotifyRejected("decrypted resource is not a transaction")
        if trade.get("appid") != self.config.appid:
            raise NotifyRejected(f"appid {trade.get('appid')!r} is not ours")
        if trade.get("mchid") != self.config.mchid:
            raise NotifyRejected(f"mchid {trade.get('mchid')!r} is not ours")
        order_no, trade_no = trade.get("out_trade_no"), trade.get("transaction_id")
        state = trade.get("trade_state")
        amount = trade.get("amount")
        if not (isinstance(order_no, str) and order_no and isinstance(trade_no, str) and trade_no):
            raise NotifyRejected("transaction lacks out_trade_no or transaction_id")
        if state not in TRADE_STATES or not isinstance(amount, dict):
            raise NotifyRejected("transaction lacks trade_state or amount")
        try:
            # amount.total is what the order asked for; payer_total only differs by coupons
            total = from_wechat_amount(amount.get("total"))
            paid_at = _parse_time(trade.get("success_time"))
        except (ValueError, TypeError) as error:
            raise NotifyRejected(f"transaction is malformed: {error}") from error
        return Notification(
            order_no=order_no,
            provider_trade_no=trade_no,
            status=TRADE_STATES[state],
            amount=total,
            app_id=self.config.appid,
            merchant_id=self.config.mchid,
            paid_at=paid_at,
        )

    def notify_answer(self, ok: bool) -> NotifyAnswer:
        """204 with no body when handled; 500 with {"code": "FAIL"} so WeChat retries."""
        if ok:
            return NotifyAnswer(status=204, body=b"", content_type="application/json")
        body = json.dumps({"code": "FAIL", "message": "失败"}, ensure_ascii=False).encode()
        return NotifyAnswer(status=500, body=body, content_type="application/json")


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise PaymentError(f"WeChat Pay answer lacks {key}", code="bad_answer")
    return value


#: columns of the v3 trade bill (交易账单, bill_type ALL) that we read
BILL_TIME, BILL_TRADE_NO, BILL_ORDER_NO, BILL_STATE = (
    "交易时间",
    "微信订单号",
    "商户订单号",
    "交易状态",
)
BILL_REFUND_NO, BILL_REFUND_AMOUNT, BILL_ORDER_AMOUNT = "商户退款单号", "退款金额", "订单金额"


def parse_trade_bill(text: str) -> list[BillRow]:
    """Rows of a v3 trade bill: a header line, "`"-prefixed values, then two summary lines."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty bill")
    header = next(csv.reader([lines[0]]))
    rows: list[BillRow] = []
    for line in lines[1:]:
        if line.startswith("总交易单数"):  # the summary block ends the detail lines
            break
        values = [v.strip().lstrip("`") for v in next(csv.reader(io.StringIO(line)))]
        if len(values) != len(header):
            raise ValueError(f"bill line has {len(values)} columns, not {len(header)}")
        row = dict(zip(header, values, strict=True))
        at = dt.datetime.strptime(row[BILL_TIME], "%Y-%m-%d %H:%M:%S").replace(tzinfo=CHINA)
        refund = row[BILL_STATE] == "REFUND"
        rows.append(
            BillRow(
                order_no=row[BILL_ORDER_NO],
                provider_trade_no=row[BILL_TRADE_NO],
                kind="refund" if refund else "payment",
                amount=bill_yuan_to_fen(row[BILL_REFUND_AMOUNT if refund else BILL_ORDER_AMOUNT]),
                at=at.astimezone(dt.UTC),
                refund_no=row[BILL_REFUND_NO] or None if refund else None,
            )
        )
    return rows
