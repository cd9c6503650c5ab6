"""WeChat Pay API v2 (XML, MD5 / HMAC-SHA256 with the merchant's API key) on wechatpy.

For merchants still on v2. Calls go through ``wechatpy.pay.WeChatPay`` and its API
classes (order.create / query / close, refund.apply / query, tools.download_bill,
jsapi.get_jsapi_params). Notifies are verified here, from the raw body, because
wechatpy's ``parse_payment_result`` checks only MD5 signatures and compares with ``!=``.

Sign types, as wechatpy 1.8.18 allows them:
- ``order.create`` takes extra fields, so it is signed with the configured sign type
  (HMAC-SHA256 preferred); the JSAPI ``paySign`` must use the same type as the prepay
  order, so for HMAC-SHA256 it is computed with wechatpy's own
  ``calculate_signature_hmac`` (``jsapi.get_jsapi_params`` hard-codes MD5).
- ``order.query``, ``order.close``, ``refund.apply``, ``refund.query`` and
  ``tools.download_bill`` take no ``sign_type`` and are always signed with MD5.
  WeChat accepts either type on every v2 call, so this is a limitation, not an error.
- wechatpy does not check the signature of responses; we do (``_checked``).
"""

from __future__ import annotations

import datetime as dt
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import quote
from xml.parsers.expat import ExpatError

import requests
import xmltodict  # type: ignore[import-untyped]
from wechatpy.exceptions import WeChatPayException  # type: ignore[import-untyped]
from wechatpy.pay import WeChatPay  # type: ignore[import-untyped]
from wechatpy.pay.utils import (  # type: ignore[import-untyped]
    calculate_signature,
    calculate_signature_hmac,
)
from wechatpy.utils import random_string  # type: ignore[import-untyped]

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

NAME: Final = "wechat_v2"
HMAC_SHA256: Final = "HMAC-SHA256"
MD5: Final = "MD5"
SIGN_TYPES: Final = (HMAC_SHA256, MD5)
#: WeChat's calendar: time_end, time_expire and bill times are Beijing time
CHINA: Final = dt.timezone(dt.timedelta(hours=8), "Asia/Shanghai")

_TRADE_TYPES: Final = {PayScene.jsapi: "JSAPI", PayScene.h5: "MWEB", PayScene.qr: "NATIVE"}
_TRADE_STATES: Final = {
    "SUCCESS": TradeStatus.paid,
    "REFUND": TradeStatus.refunded,
    "NOTPAY": TradeStatus.pending,
    "USERPAYING": TradeStatus.pending,
    "CLOSED": TradeStatus.closed,
    "REVOKED": TradeStatus.closed,
    "PAYERROR": TradeStatus.failed,
}
_REFUND_STATES: Final = {
    "SUCCESS": "succeeded",
    "PROCESSING": "processing",
    "REFUNDCLOSE": "failed",
    "CHANGE": "failed",
}
_FEN: Final = re.compile(r"[0-9]{1,12}")
_YUAN: Final = re.compile(r"-?[0-9]{1,12}(\.[0-9]{1,2})?")
_MAX_NOTIFY_BYTES: Final = 64 * 1024
_T = TypeVar("_T")


@dataclass(frozen=True)
class WechatV2Config:
    """The merchant's v2 settings; keys are named by file path and loaded once."""

    appid: str  #: 公众号 / 应用 appid
    mch_id: str  #: 商户号
    api_key_path: Path  #: file holding the 32-character API key (APIv2 密钥)
    notify_url: str  #: default notify URL when a request names none
    sign_type: str = HMAC_SHA256  #: for unifiedorder and JSAPI paySign; MD5 supported
    api_base_url: str = "https://api.mch.weixin.qq.com/"
    #: apiclient_cert.pem / apiclient_key.pem: refunds need TLS client auth in production;
    #: None in the sandbox, which is plain HTTP under the portal and cannot check them
    client_cert_path: Path | None = None
    client_key_path: Path | None = None
    timeout: float = 10.0


# -- money at the edge: WeChat v2 speaks integer fen on the API, yuan in the bill --------
def fen_to_wire(amount: int) -> int:
    """Our fen to WeChat's ``total_fee`` / ``refund_fee`` (also fen); refuse non-positive."""
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise PaymentError(
            f"amount must be a positive number of fen, not {amount!r}", code="amount"
        )
    return amount


def wire_to_fen(text: object) -> int:
    """WeChat's fen field (``"1234"``) to our fen; ValueError unless plain digits."""
    if not isinstance(text, str) or not _FEN.fullmatch(text):
        raise ValueError(f"not an amount in fen: {text!r}")
    return int(text)


def bill_yuan_to_fen(text: str) -> int:
    """A bill amount in yuan (``"12.34"``) to fen, exactly (Decimal); ValueError otherwise."""
    if not _YUAN.fullmatch(text):
        raise ValueError(f"not an amount in yuan: {text!r}")
    try:
        fen = Decimal(text) * 100
    except InvalidOperation as exc:  # pragma: no cover - the pattern already refuses these
        raise ValueError(f"not an amount in yuan: {text!r}") from exc
    return int(fen)


# -- signatures ------------------------------------------------------------------------
def sign(fields: dict[str, str], api_key: str, sign_type: str) -> str:
    """WeChat v2 sign over ``fields`` (minus ``sign``), by wechatpy's own functions."""
    unsigned = {k: v for k, v in fields.items() if k != "sign"}
    if sign_type == HMAC_SHA256:
        return str(calculate_signature_hmac(unsigned, api_key))
    if sign_type == MD5:
        return str(calculate_signature(unsigned, api_key))
    raise ValueError(f"unknown sign_type {sign_type!r}")


def signature_valid(fields: dict[str, str], api_key: str, sign_type: str) -> bool:
    """True if ``fields["sign"]`` is the sign of the other fields, compared in constant time."""
    given = fields.get("sign", "")
    expected = sign(fields, api_key, sign_type)
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("ascii"))


def parse_xml(body: bytes) -> dict[str, str]:
    """A flat ``<xml><k>v</k>...</xml>`` document as a dict; ValueError if it is anything else.

    xmltodict is called with entities disabled (no DTD expansion, no external fetches).
    """
    try:
        document = xmltodict.parse(body, disable_entities=True)
    except (ExpatError, ValueError, UnicodeError) as exc:
        raise ValueError(f"not XML: {exc}") from exc
    if not isinstance(document, dict) or set(document) != {"xml"}:
        raise ValueError("the root element is not <xml>")
    root = document["xml"]
    if root is None:
        return {}
    if not isinstance(root, dict):
        raise ValueError("<xml> holds text, not fields")
    fields: dict[str, str] = {}
    for key, value in root.items():
        if key.startswith(("@", "#")):
            raise ValueError(f"unexpected attribute or text {key!r} in <xml>")
        if value is None:
            value = ""
        if not isinstance(value, str):
            raise ValueError(f"field {key!r} is repeated or nested")
        fields[key] = value
    return fields


def load_api_key(path: Path) -> str:
    """Read the 32-character API key from its file; ValueError if it is not one."""
    key = Path(path).read_text(encoding="ascii").strip()
    if not re.fullmatch(r"[A-Za-z0-9]{32}", key):
        raise ValueError(f"{path}: a WeChat Pay v2 API key is 32 letters or digits")
    return key


def parse_time_end(text: str) -> dt.datetime:
    """``yyyyMMddHHmmss`` in Beijing time to an aware UTC datetime."""
    if not re.fullmatch(r"[0-9]{14}", text):
        raise ValueError(f"not a yyyyMMddHHmmss time: {text!r}")
    return dt.datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=CHINA).astimezone(dt.UTC)


class WechatV2Provider:
    """WeChat Pay API v2 behind :class:`payments.base.Provider`."""

    name = NAME

    def __init__(self, config: WechatV2Config) -> None:
        if config.sign_type not in SIGN_TYPES:
            raise ValueError(f"sign_type must be one of {SIGN_TYPES}, not {config.sign_type!r}")
        if (config.client_cert_path is None) != (config.client_key_path is None):
            raise ValueError("client_cert_path and client_key_path go together")
        self.config = config
        self._api_key = load_api_key(config.api_key_path)
        self._client: Any = WeChatPay(
            appid=config.appid,
            api_key=self._api_key,
            mch_id=config.mch_id,
            mch_cert=str(config.client_cert_path) if config.client_cert_path else None,
            mch_key=str(config.client_key_path) if config.client_key_path else None,
            timeout=config.timeout,
            # wechatpy's sandbox=True means WeChat's own "sandboxnew" (fetches a sign key
            # first); ours is a separate gateway reached through API_BASE_URL below
            sandbox=False,
        )
        # The one place the gateway is chosen: wechatpy joins API_BASE_URL + endpoint, so
        # pointing this instance attribute at our sandbox keeps every SDK code path real.
        self._client.API_BASE_URL = config.api_base_url.rstrip("/") + "/"

    # -- calls ----------------------------------------------------------------------------
    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        """Unified order (统一下单) for JSAPI, H5 (MWEB) or Native (QR)."""
        trade_type = _TRADE_TYPES.get(request.scene)
        if trade_type is None:
            raise PaymentError(f"WeChat Pay v2 has no {request.scene} scene", code="scene")
        extra: dict[str, Any] = {"sign_type": self.config.sign_type}
        if request.scene is PayScene.jsapi:
            if not request.payer_openid:
                raise PaymentError("JSAPI needs the payer's openid", code="openid")
            extra["user_id"] = request.payer_openid
        if request.scene is PayScene.qr:
            extra["product_id"] = request.order_no  # required for NATIVE
        if request.scene is PayScene.h5:
            extra["scene_info"] = {
                "h5_info": {"type": "Wap", "wap_url": request.return_url, "wap_name": "燃气缴费"}
            }
        if request.expires_at is not None:
            extra["time_expire"] = request.expires_at.astimezone(CHINA)
        data = self._call(
            self._client.order.create,
            trade_type=trade_type,
            body=_truncate_utf8(request.subject, 128),
            total_fee=fen_to_wire(request.amount),
            notify_url=request.notify_url or self.config.notify_url,
            client_ip=request.client_ip,
            out_trade_no=request.order_no,
            sign_type_used=self.config.sign_type,
            **extra,
        )
        prepay_id = _required(data, "prepay_id")
        if request.scene is PayScene.jsapi:
            return PaymentStart(jsapi_params=self.jsapi_params(prepay_id))
        if request.scene is PayScene.h5:
            url = _required(data, "mweb_url")
            if request.return_url:
                # WeChat's documented way back to the merchant after an H5 payment
                url += "&redirect_url=" + quote(request.return_url, safe="")
            return PaymentStart(redirect_url=url)
        return PaymentStart(qr_code=_required(data, "code_url"))

    def jsapi_params(self, prepay_id: str) -> dict[str, str]:
        """WeixinJSBridge getBrandWCPayRequest parameters, signed like the prepay order."""
        if self.config.sign_type == MD5:
            params: dict[str, Any] = self._client.jsapi.get_jsapi_params(prepay_id)
            return {k: str(v) for k, v in params.items()}
        # get_jsapi_params hard-codes signType MD5, but WeChat requires paySign to use
        # the sign type of the unified order: same fields, wechatpy's HMAC function
        params = {
            "appId": self.config.appid,
            "timeStamp": str(int(time.time())),
            "nonceStr": str(random_string(32)),
            "package": f"prepay_id={prepay_id}",
            "signType": HMAC_SHA256,
        }
        params["paySign"] = sign(params, self._api_key, HMAC_SHA256)
        return params

    def query(self, order_no: str) -> TradeQuery:
        """Order query (查询订单); an order WeChat does not know is ``unknown``."""
        try:
            data = self._call(self._client.order.query, out_trade_no=order_no)
        except PaymentError as exc:
            if exc.code == "ORDERNOTEXIST":
                return TradeQuery(order_no=order_no, status=TradeStatus.unknown)
            raise
        state = data.get("trade_state", "")
        status = _TRADE_STATES.get(state)
        if status is None:
            raise PaymentError(f"unknown trade_state {state!r}", code="malformed")
        if data.get("out_trade_no") != order_no:
            raise PaymentError("query answered for another order", code="malformed")
        amount = _fen_field(data, "total_fee") if "total_fee" in data else None
        paid_at = None
        if status in {TradeStatus.paid, TradeStatus.refunded} and data.get("time_end"):
            paid_at = _field(parse_time_end, data["time_end"], "time_end")
        return TradeQuery(
            order_no=order_no,
            status=status,
            amount=amount,
            provider_trade_no=data.get("transaction_id") or None,
            paid_at=paid_at,
        )

    def close(self, order_no: str) -> None:
        """Close an unpaid order (关闭订单); closing a closed or unknown one is done already."""
        try:
            self._call(self._client.order.close, out_trade_no=order_no)
        except PaymentError as exc:
            if exc.code in {"ORDERCLOSED", "ORDERNOTEXIST"}:
                return
            raise

    def refund(self, request: RefundRequest) -> RefundResult:
        """Apply for a refund (申请退款), then query it: v2's apply only says "accepted"."""
        self._call(
            self._client.refund.apply,
            total_fee=fen_to_wire(request.total_amount),
            refund_fee=fen_to_wire(request.refund_amount),
            out_refund_no=request.refund_no,
            out_trade_no=request.order_no,
            refund_desc=request.reason or None,
            notify_url=request.notify_url or None,
        )
        data = self._call(self._client.refund.query, out_refund_no=request.refund_no)
        for i in range(_field(int, data.get("refund_count", "0"), "refund_count")):
            if data.get(f"out_refund_no_{i}") == request.refund_no:
                return RefundResult(
                    refund_no=request.refund_no,
                    status=_REFUND_STATES.get(data.get(f"refund_status_{i}", ""), "processing"),
                    provider_refund_no=data.get(f"refund_id_{i}") or None,
                    amount=_fen_field(data, f"refund_fee_{i}"),
                )
        raise PaymentError("refund query does not list the refund", code="malformed")

    def download_bill(self, day: dt.date) -> list[BillRow]:
        """The day's bill (下载对账单, type ALL) as rows; a day without trades has none."""
        try:
            text = self._call(
                self._client.tools.download_bill, bill_date=day, bill_type="ALL", text_ok=True
            )
        except PaymentError as exc:
            # WeChat answers return_code FAIL "No Bill Exist" for a day without trades
            if "No Bill Exist" in str(exc):
                return []
            raise
        if not isinstance(text, str):
            raise PaymentError("the bill is not text", code="malformed")
        return parse_bill(text)

    # -- notifies ---------------------------------------------------------------------------
    def parse_notify(self, request: NotifyRequest, *, now: dt.datetime) -> Notification:
        """Verify a payment notify (支付结果通知) from its raw XML body.

        v2 notifies carry no timestamp to check; ``now`` is unused.
        """
        if len(request.body) > _MAX_NOTIFY_BYTES:
            raise NotifyRejected("notify body too large")
        try:
            fields = parse_xml(request.body)
        except ValueError as exc:
            raise NotifyRejected(f"malformed notify: {exc}") from None
        if fields.get("return_code") != "SUCCESS":
            raise NotifyRejected(f"return_code is {fields.get('return_code')!r}, not SUCCESS")
        if not fields.get("sign"):
            raise NotifyRejected("notify has no sign")
        sign_type = fields.get("sign_type") or MD5  # WeChat's documented default
        if sign_type not in SIGN_TYPES:
            raise NotifyRejected(f"unknown sign_type {sign_type!r}")
        if not signature_valid(fields, self._api_key, sign_type):
            raise NotifyRejected(f"bad {sign_type} sign")
        if fields.get("appid") != self.config.appid:
            raise NotifyRejected(f"appid {fields.get('appid')!r} is not ours")
        if fields.get("mch_id") != self.config.mch_id:
            raise NotifyRejected(f"mch_id {fields.get('mch_id')!r} is not ours")
        result = fields.get("result_code")
        if result not in {"SUCCESS", "FAIL"}:
            raise NotifyRejected(f"result_code {result!r} is neither SUCCESS nor FAIL")
        order_no = fields.get("out_trade_no", "")
        if not order_no:
            raise NotifyRejected("notify names no out_trade_no")
        try:
            amount = wire_to_fen(fields.get("total_fee"))
            paid_at = parse_time_end(fields["time_end"]) if fields.get("time_end") else None
        except ValueError as exc:
            raise NotifyRejected(f"malformed notify: {exc}") from None
        if fields.get("fee_type", "CNY") != "CNY":
            raise NotifyRejected(f"fee_type {fields['fee_type']!r} is not CNY")
        trade_no = fields.get("transaction_id", "")
        if result == "SUCCESS" and (not trade_no or paid_at is None):
            raise NotifyRejected("a successful notify needs transaction_id and time_end")
        return Notification(
            order_no=order_no,
            provider_trade_no=trade_no,
            status=TradeStatus.paid if result == "SUCCESS" else TradeStatus.failed,
            amount=amount,
            app_id=fields["appid"],
            merchant_id=fields["mch_id"],
            paid_at=paid_at if result == "SUCCESS" else None,
        )

    def notify_answer(self, ok: bool) -> NotifyAnswer:
        """WeChat's XML answer: return_code SUCCESS stops retries, FAIL asks for them."""
        code, message = ("SUCCESS", "OK") if ok else ("FAIL", "ERROR")
        body = (
            f"<xml><return_code><![CDATA[{code}]]></return_code>"
            f"<return_msg><![CDATA[{message}]]></return_msg></xml>"
        ).encode()
        return NotifyAnswer(status=200, body=body, content_type="text/xml; charset=utf-8")

    # -- plumbing -------------------------------------------------------------------------
    def _call(
        self, method: Any, *, sign_type_used: str = MD5, text_ok: bool = False, **kwargs: Any
    ) -> Any:
        """Call a wechatpy API method; map its failures to PaymentError, check the answer."""
        try:
            data = method(**kwargs)
        except (KeyError, TypeError) as exc:  # wechatpy reading XML without return_code
            raise PaymentError(f"WeChat Pay v2 answer: {exc!r}", code="malformed") from None
        except WeChatPayException as exc:
            code = exc.errcode or exc.result_code or exc.return_code or "provider_error"
            detail = " ".join(
                str(part) for part in (exc.return_msg, exc.errcode, exc.errmsg) if part
            )
            raise PaymentError(f"WeChat Pay v2: {detail or exc}", code=str(code)) from None
        except requests.RequestException as exc:
            raise PaymentError(f"WeChat Pay v2 unreachable: {exc}", code="unreachable") from None
        if isinstance(data, str):  # wechatpy hands back what is not XML: only the bill is
            if not text_ok:
                raise PaymentError("WeChat Pay v2 answer is not XML", code="malformed")
            return data
        return self._checked(dict(data), sign_type_used)

    def _checked(self, data: dict[str, Any], sign_type: str) -> dict[str, str]:
        """Refuse an answer that is not signed with our key or is about another merchant."""
        fields = {
            k: v if isinstance(v, str) else "" if v is None else str(v) for k, v in data.items()
        }
        if not signature_valid(fields, self._api_key, sign_type):
            raise PaymentError("WeChat Pay v2 answer has a bad sign", code="bad_sign")
        if fields.get("mch_id") != self.config.mch_id or fields.get("appid") != self.config.appid:
            raise PaymentError("WeChat Pay v2 answer is about another merchant", code="malformed")
        return fields


def parse_bill(text: str) -> list[BillRow]:
    """WeChat's v2 text bill (ALL): payments (SUCCESS) and refunds (REFUND) as rows.

    Every field starts with a backquote; splitting on ",`" keeps commas inside goods
    names. The summary's 总交易单数 must match the rows read, so a cut bill is refused.
    """
    lines = [line for line in text.lstrip("\ufeff").splitlines() if line.strip()]
    if not lines:
        raise PaymentError("empty bill", code="malformed")
    header = [name.strip() for name in lines[0].split(",")]
    try:
        col = {name: header.index(name) for name in _BILL_COLUMNS}
        total_at = next(i for i, line in enumerate(lines) if line.startswith("总交易单数"))
        summary = _bill_fields(lines[total_at + 1])
        expected = int(summary[0])
        rows: list[BillRow] = []
        data_lines = lines[1:total_at]
        for line in data_lines:
            values = _bill_fields(line)
            if len(values) != len(header):
                raise ValueError(f"{len(values)} fields, header has {len(header)}")
            at = (
                dt.datetime.strptime(values[col["交易时间"]], "%Y-%m-%d %H:%M:%S")
                .replace(tzinfo=CHINA)
                .astimezone(dt.UTC)
            )
            state = values[col["交易状态"]]
            if state == "SUCCESS":
                rows.append(
                    BillRow(
                        order_no=values[col["商户订单号"]],
                        provider_trade_no=values[col["微信订单号"]],
                        kind="payment",
                        amount=bill_yuan_to_fen(values[col["订单金额"]]),
                        at=at,
                    )
                )
            elif state == "REFUND":
                rows.append(
                    BillRow(
                        order_no=values[col["商户订单号"]],
                        provider_trade_no=values[col["微信订单号"]],
                        kind="refund",
                        amount=abs(bill_yuan_to_fen(values[col["申请退款金额"]])),
                        at=at,
                        refund_no=values[col["商户退款单号"]],
                    )
                )
            # other states (REVOKED) move no money
    except (ValueError, IndexError, StopIteration) as exc:
        raise PaymentError(f"malformed bill: {exc!r}", code="malformed") from None
    if expected != len(data_lines):
        raise PaymentError(
            f"bill lists {len(data_lines)} rows, its summary says {expected}", code="malformed"
        )
    return rows


_BILL_COLUMNS: Final = (
    "交易时间",
    "微信订单号",
    "商户订单号",
    "交易状态",
    "订单金额",
    "商户退款单号",
    "申请退款金额",
)


def _bill_fields(line: str) -> list[str]:
    if not line.startswith("`"):
        raise ValueError(f"bill line does not start with a backquote: {line[:40]!r}")
    return [value.strip() for value in line[1:].split(",`")]


def _required(data: dict[str, str], key: str) -> str:
    value = data.get(key)
    if not value:
        raise PaymentError(f"WeChat Pay v2 answer lacks {key}", code="malformed")
    return value


def _fen_field(data: dict[str, str], key: str) -> int:
    return _field(wire_to_fen, data.get(key), key)


def _field(convert: Callable[[Any], _T], value: Any, key: str) -> _T:
    try:
        return convert(value)
    except (TypeError, ValueError) as exc:
        raise PaymentError(f"WeChat Pay v2 answer: bad {key}: {exc}", code="malformed") from None


def _truncate_utf8(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes without splitting a character."""
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")
