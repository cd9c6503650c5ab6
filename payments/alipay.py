"""Alipay (支付宝) adapter on alipay-sdk-python: WAP and QR (precreate) payments, notifies.

SDK code paths used: the request and model classes build every call's parameters
(``get_params``), ``DefaultAlipayClient.page_execute(..., "GET")`` builds and signs the
WAP redirect, ``get_sign_content`` builds the string to sign, ``verify_with_rsa``
checks Alipay's signatures (responses and notifies) and the response classes parse
the verified content. Avoided: ``DefaultAlipayClient.execute()``, because
``WebUtils.get_http_connection`` always connects to port 80/443 and concatenates the
URL's int port to a str (TypeError) for a gateway URL with a port; we POST with urllib
instead. For those POSTs we sign with ``cryptography`` (PKCS#1 v1.5 is deterministic,
so the bytes equal the SDK's ``sign_with_rsa2``) because the SDK's pure-python ``rsa``
takes ~20 ms per signature.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import re
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, cast
from zoneinfo import ZoneInfo

import rsa.pkcs1
from alipay.aop.api.AlipayClientConfig import AlipayClientConfig  # type: ignore[import-untyped]
from alipay.aop.api.constant.CommonConstants import (  # type: ignore[import-untyped]
    PATTERN_RESPONSE_BEGIN,
    PATTERN_RESPONSE_SIGN_BEGIN,
)
from alipay.aop.api.DefaultAlipayClient import DefaultAlipayClient  # type: ignore[import-untyped]
from alipay.aop.api.domain.AlipayDataDataserviceBillDownloadurlQueryModel import (  # type: ignore[import-untyped]
    AlipayDataDataserviceBillDownloadurlQueryModel,
)
from alipay.aop.api.domain.AlipayTradeCloseModel import (  # type: ignore[import-untyped]
    AlipayTradeCloseModel,
)
from alipay.aop.api.domain.AlipayTradePrecreateModel import (  # type: ignore[import-untyped]
    AlipayTradePrecreateModel,
)
from alipay.aop.api.domain.AlipayTradeQueryModel import (  # type: ignore[import-untyped]
    AlipayTradeQueryModel,
)
from alipay.aop.api.domain.AlipayTradeRefundModel import (  # type: ignore[import-untyped]
    AlipayTradeRefundModel,
)
from alipay.aop.api.domain.AlipayTradeWapPayModel import (  # type: ignore[import-untyped]
    AlipayTradeWapPayModel,
)
from alipay.aop.api.request.AlipayDataDataserviceBillDownloadurlQueryRequest import (  # type: ignore[import-untyped]
    AlipayDataDataserviceBillDownloadurlQueryRequest,
)
from alipay.aop.api.request.AlipayTradeCloseRequest import (  # type: ignore[import-untyped]
    AlipayTradeCloseRequest,
)
from alipay.aop.api.request.AlipayTradePrecreateRequest import (  # type: ignore[import-untyped]
    AlipayTradePrecreateRequest,
)
from alipay.aop.api.request.AlipayTradeQueryRequest import (  # type: ignore[import-untyped]
    AlipayTradeQueryRequest,
)
from alipay.aop.api.request.AlipayTradeRefundRequest import (  # type: ignore[import-untyped]
    AlipayTradeRefundRequest,
)
from alipay.aop.api.request.AlipayTradeWapPayRequest import (  # type: ignore[import-untyped]
    AlipayTradeWapPayRequest,
)
from alipay.aop.api.response.AlipayDataDataserviceBillDownloadurlQueryResponse import (  # type: ignore[import-untyped]
    AlipayDataDataserviceBillDownloadurlQueryResponse,
)
from alipay.aop.api.response.AlipayTradeCloseResponse import (  # type: ignore[import-untyped]
    AlipayTradeCloseResponse,
)
from alipay.aop.api.response.AlipayTradePrecreateResponse import (  # type: ignore[import-untyped]
    AlipayTradePrecreateResponse,
)
from alipay.aop.api.response.AlipayTradeQueryResponse import (  # type: ignore[import-untyped]
    AlipayTradeQueryResponse,
)
from alipay.aop.api.response.AlipayTradeRefundResponse import (  # type: ignore[import-untyped]
    AlipayTradeRefundResponse,
)
from alipay.aop.api.util.SignatureUtils import (  # type: ignore[import-untyped]
    get_sign_content,
    verify_with_rsa,
)
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric import rsa as crypto_rsa

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

#: Alipay's clock: every time it sends or expects is Beijing time without an offset
BEIJING = ZoneInfo("Asia/Shanghai")
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
#: charsets Alipay may name in a notify's ``charset`` field
CHARSETS = {"utf-8": "utf-8", "utf8": "utf-8", "gbk": "gbk", "gb2312": "gb2312"}
#: a notify is a few hundred bytes; anything this large is not from Alipay
MAX_NOTIFY_BYTES = 64 * 1024
MAX_BILL_BYTES = 64 * 1024 * 1024
_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,10})\.[0-9]{2}")
_STATUS = {
    "WAIT_BUYER_PAY": TradeStatus.pending,
    "TRADE_SUCCESS": TradeStatus.paid,
    "TRADE_FINISHED": TradeStatus.paid,
    "TRADE_CLOSED": TradeStatus.closed,
}


@dataclass(frozen=True)
class AlipayConfig:
    """The merchant's Alipay application: ids, key files and the gateway."""

    app_id: str
    #: the app's private key (PEM; PKCS#1 as the SDK wants, PKCS#8 is converted)
    app_private_key_path: Path
    #: Alipay's public key (PEM, SubjectPublicKeyInfo) that signs responses and notifies
    alipay_public_key_path: Path
    gateway_url: str = "https://openapi.alipay.com/gateway.do"
    #: the merchant's PID (2088...); when set, a notify for another seller is refused
    seller_id: str = ""
    sign_type: str = "RSA2"
    #: used when a PaymentRequest carries no notify_url
    notify_url: str = ""
    timeout: float = 15.0

    def __post_init__(self) -> None:
        if self.sign_type != "RSA2":
            raise ValueError("only sign_type RSA2 (SHA256withRSA) is supported")
        if not self.app_id:
            raise ValueError("app_id is required")


def fen_to_yuan(fen: int) -> str:
    """Fen to Alipay's yuan string, exactly: 1234 → "12.34"."""
    if isinstance(fen, bool) or not isinstance(fen, int) or fen <= 0:
        raise ValueError(f"amount must be a positive number of fen, not {fen!r}")
    return f"{fen // 100}.{fen % 100:02d}"


def yuan_to_fen(yuan: str) -> int:
    """Alipay's yuan string to fen, exactly: "12.34" → 1234; refuses anything else."""
    if not isinstance(yuan, str) or not _AMOUNT.fullmatch(yuan):
        raise ValueError(f"not an amount with two decimals: {yuan!r}")
    try:
        fen = Decimal(yuan) * 100
    except InvalidOperation as exc:  # pragma: no cover - the pattern excludes it
        raise ValueError(f"not an amount: {yuan!r}") from exc
    if fen <= 0:
        raise ValueError(f"amount must be positive: {yuan!r}")
    return int(fen)


def beijing_time(text: str) -> dt.datetime:
    """Alipay's "yyyy-MM-dd HH:mm:ss" (Beijing time) as an aware UTC datetime."""
    local = dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=BEIJING)
    return local.astimezone(dt.UTC)


def format_beijing(moment: dt.datetime) -> str:
    """An aware datetime as Alipay's "yyyy-MM-dd HH:mm:ss" in Beijing time."""
    if moment.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return moment.astimezone(BEIJING).strftime(TIME_FORMAT)


def notify_sign_content(params: dict[str, str]) -> str:
    """The string Alipay signs in a notify: all fields but sign/sign_type, sorted, k=v&..."""
    # Empty values do not take part, as in Alipay's own Java SDK (AlipaySignature).
    kept = {k: v for k, v in params.items() if k not in ("sign", "sign_type") and v != ""}
    return cast(str, get_sign_content(kept))


def request_sign_content(params: dict[str, str]) -> str:
    """The string an app signs in a gateway request: all fields but sign, sorted."""
    kept = {k: v for k, v in params.items() if k != "sign" and v != ""}
    return cast(str, get_sign_content(kept))


def sign_rsa2(private_key: crypto_rsa.RSAPrivateKey, content: str, charset: str = "utf-8") -> str:
    """SHA256withRSA over ``content``, base64 — the same bytes as the SDK's sign_with_rsa2."""
    signature = private_key.sign(content.encode(charset), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def verify_rsa2(public_key_pem: str, message: bytes, sign: str) -> bool:
    """True if ``sign`` is Alipay's SHA256withRSA over ``message``; never raises."""
    try:
        # The SDK raises on a bad signature instead of returning False.
        if not verify_with_rsa(public_key_pem, message, sign):
            return False
        # verify_with_rsa accepts whichever hash the signature names (also SHA-1, the
        # old "RSA" type); RSA2 means SHA-256, so insist on it.
        public_key = rsa.PublicKey.load_pkcs1_openssl_pem(public_key_pem.encode("ascii"))
        digest = rsa.pkcs1.find_signature_hash(base64.b64decode(sign), public_key)
        return bool(digest == "SHA-256")
    except Exception:  # the SDK and rsa raise many kinds (VerificationError, binascii, ...)
        return False


def load_private_key(path: Path) -> crypto_rsa.RSAPrivateKey:
    """An RSA private key from a PEM file (PKCS#1 or PKCS#8)."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, crypto_rsa.RSAPrivateKey):
        raise ValueError(f"{path}: not an RSA private key")
    return key


class AlipayProvider:
    """Alipay behind payments.base.Provider: WAP (redirect) and QR (precreate) scenes."""

    name = "alipay"

    def __init__(self, config: AlipayConfig) -> None:
        self.config = config
        self._private_key = load_private_key(config.app_private_key_path)
        #: the SDK signs only with PKCS#1 PEM text
        self._private_pem = self._private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode("ascii")
        public = serialization.load_pem_public_key(Path(config.alipay_public_key_path).read_bytes())
        if not isinstance(public, crypto_rsa.RSAPublicKey):
            raise ValueError(f"{config.alipay_public_key_path}: not an RSA public key")
        self._alipay_public_pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
        client_config = AlipayClientConfig()
        client_config.app_id = config.app_id
        client_config.app_private_key = self._private_pem
        client_config.alipay_public_key = self._alipay_public_pem
        client_config.server_url = config.gateway_url
        client_config.sign_type = config.sign_type
        client_config.charset = "utf-8"
        client_config.timeout = config.timeout
        self._client = DefaultAlipayClient(client_config)

    # paying -----------------------------------------------------------------------
    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        """A redirect to Alipay's WAP cashier, or the QR content of a precreated trade."""
        try:
            total = fen_to_yuan(request.amount)
        except ValueError as exc:
            raise PaymentError(str(exc), code="invalid_amount") from exc
        notify_url = request.notify_url or self.config.notify_url
        time_expire = format_beijing(request.expires_at) if request.expires_at else None
        if request.scene is PayScene.wap:
            model = AlipayTradeWapPayModel()
            model.out_trade_no = request.order_no
            model.total_amount = total
            model.subject = request.subject
            model.product_code = "QUICK_WAP_WAY"
            if time_expire:
                model.time_expire = time_expire
            if request.return_url:
                model.quit_url = request.return_url
            wap = AlipayTradeWapPayRequest(biz_model=model)
            if notify_url:
                wap.notify_url = notify_url
            if request.return_url:
                wap.return_url = request.return_url
            # page_execute does not touch the network: it only builds the signed URL.
            url = cast(str, self._client.page_execute(wap, http_method="GET"))
            return PaymentStart(redirect_url=url)
        if request.scene is PayScene.qr:
            model = AlipayTradePrecreateModel()
            model.out_trade_no = request.order_no
            model.total_amount = total
            model.subject = request.subject
            if time_expire:
                model.time_expire = time_expire
            precreate = AlipayTradePrecreateRequest(biz_model=model)
            if notify_url:
                precreate.notify_url = notify_url
            answer = self._call(precreate, AlipayTradePrecreateResponse())
            if not answer.qr_code:
                raise PaymentError("precreate answered without qr_code", code="bad_response")
            return PaymentStart(qr_code=str(answer.qr_code))
        raise PaymentError(f"Alipay does not serve scene {request.scene}", code="unsupported_scene")

    # notifies ---------------------------------------------------------------------
    def parse_notify(self, request: NotifyRequest, *, now: dt.datetime) -> Notification:
        """Verify Alipay's trade_status_sync notify from the raw body; NotifyRejected if not.

        ``now`` is not used: Alipay retries one notify for 25 hours with the same
        fields, so its age says nothing; the signature and our ids are the proof.
        """
        params = parse_notify_form(request.body)
        sign = params.get("sign", "")
        if not sign:
            raise NotifyRejected("missing sign")
        if params.get("sign_type", "RSA2") != "RSA2":
            raise NotifyRejected(f"sign_type {params.get('sign_type')!r} is not RSA2")
        charset = CHARSETS[params.get("charset", "utf-8").lower()]
        try:
            content = notify_sign_content(params).encode(charset)
        except UnicodeEncodeError as exc:
            raise NotifyRejected(f"notify does not fit its charset {charset}") from exc
        if not verify_rsa2(self._alipay_public_pem, content, sign):
            raise NotifyRejected("signature does not verify with Alipay's public key")
        if params.get("notify_type") != "trade_status_sync":
            raise NotifyRejected(f"notify_type {params.get('notify_type')!r} is not handled")
        app_id = params.get("app_id", "")
        if app_id != self.config.app_id:
            raise NotifyRejected(f"app_id {app_id!r} is not ours ({self.config.app_id})")
        seller_id = params.get("seller_id", "")
        if self.config.seller_id and seller_id != self.config.seller_id:
            raise NotifyRejected(f"seller_id {seller_id!r} is not ours ({self.config.seller_id})")
        for name in ("out_trade_no", "trade_no", "trade_status", "total_amount"):
            if not params.get(name):
                raise NotifyRejected(f"missing {name}")
        try:
            amount = yuan_to_fen(params["total_amount"])
        except ValueError as exc:
            raise NotifyRejected(f"total_amount: {exc}") from exc
        status = _STATUS.get(params["trade_status"])
        if status is None or status is TradeStatus.pending:
            raise NotifyRejected(f"trade_status {params['trade_status']!r} is not a notify status")
        paid_at = None
        if params.get("gmt_payment"):
            try:
                paid_at = beijing_time(params["gmt_payment"])
            except ValueError as exc:
                raise NotifyRejected(f"gmt_payment: {exc}") from exc
        if status is TradeStatus.closed and (params.get("gmt_refund") or params.get("refund_fee")):
            # TRADE_CLOSED covers both "expired unpaid" and "fully refunded after paying".
            status = TradeStatus.refunded
        return Notification(
            order_no=params["out_trade_no"],
            provider_trade_no=params["trade_no"],
            status=status,
            amount=amount,
            app_id=app_id,
            merchant_id=seller_id,
            paid_at=paid_at,
        )

    def notify_answer(self, ok: bool) -> NotifyAnswer:
        """``success`` stops Alipay's retries; anything else (``fail``) makes it retry."""
        body = b"success" if ok else b"fail"
        return NotifyAnswer(status=200, body=body, content_type="text/plain; charset=utf-8")

    # server-to-server calls -------------------------------------------------------
    def query(self, order_no: str) -> TradeQuery:
        """alipay.trade.query: the trade's status; unknown if Alipay has no such trade."""
        model = AlipayTradeQueryModel()
        model.out_trade_no = order_no
        try:
            answer = self._call(
                AlipayTradeQueryRequest(biz_model=model), AlipayTradeQueryResponse()
            )
        except PaymentError as exc:
            if exc.code == "ACQ.TRADE_NOT_EXIST":
                return TradeQuery(order_no=order_no, status=TradeStatus.unknown)
            raise
        status = _STATUS.get(str(answer.trade_status), TradeStatus.unknown)
        paid_at = beijing_time(answer.send_pay_date) if answer.send_pay_date else None
        if status is TradeStatus.closed and paid_at is not None:
            # A closed trade that was paid has been refunded in full (Alipay closes it then).
            status = TradeStatus.refunded
        try:
            amount = yuan_to_fen(str(answer.total_amount))
        except ValueError as exc:
            raise PaymentError(f"query: total_amount {exc}", code="bad_response") from exc
        if answer.out_trade_no and answer.out_trade_no != order_no:
            raise PaymentError("query answered about another trade", code="bad_response")
        return TradeQuery(
            order_no=order_no,
            status=status,
            amount=amount,
            provider_trade_no=answer.trade_no or None,
            paid_at=paid_at,
        )

    def close(self, order_no: str) -> None:
        """alipay.trade.close an unpaid trade; a trade Alipay never created needs nothing."""
        model = AlipayTradeCloseModel()
        model.out_trade_no = order_no
        try:
            self._call(AlipayTradeCloseRequest(biz_model=model), AlipayTradeCloseResponse())
        except PaymentError as exc:
            # A WAP trade exists only once the payer opened the cashier; our time_expire
            # keeps a later opening from paying, so there is nothing to close.
            if exc.code != "ACQ.TRADE_NOT_EXIST":
                raise

    def refund(self, request: RefundRequest) -> RefundResult:
        """alipay.trade.refund with out_request_no = refund_no (safe to repeat)."""
        try:
            amount = fen_to_yuan(request.refund_amount)
        except ValueError as exc:
            raise PaymentError(str(exc), code="invalid_amount") from exc
        if request.refund_amount > request.total_amount:
            raise PaymentError("refund exceeds the order's amount", code="refund_too_large")
        model = AlipayTradeRefundModel()
        model.out_trade_no = request.order_no
        model.refund_amount = amount
        model.out_request_no = request.refund_no
        if request.reason:
            model.refund_reason = request.reason
        answer = self._call(AlipayTradeRefundRequest(biz_model=model), AlipayTradeRefundResponse())
        # Alipay: fund_change "Y" means this call moved the money; "N" (a repeat, or not
        # settled yet) has to be confirmed by a refund query, so it stays "processing".
        status = "succeeded" if answer.fund_change == "Y" else "processing"
        return RefundResult(
            refund_no=request.refund_no,
            status=status,
            provider_refund_no=None,
            amount=request.refund_amount,
        )

    def download_bill(self, day: dt.date) -> list[BillRow]:
        """The day's trade bill (业务明细): payments and refunds, from Alipay's CSV-in-zip."""
        model = AlipayDataDataserviceBillDownloadurlQueryModel()
        model.bill_type = "trade"
        model.bill_date = day.isoformat()
        answer = self._call(
            AlipayDataDataserviceBillDownloadurlQueryRequest(biz_model=model),
            AlipayDataDataserviceBillDownloadurlQueryResponse(),
        )
        url = str(answer.bill_download_url or "")
        if not url.startswith(("http://", "https://")):
            raise PaymentError("no bill_download_url in the answer", code="bad_response")
        try:
            with urllib.request.urlopen(url, timeout=self.config.timeout) as response:  # noqa: S310
                data = response.read(MAX_BILL_BYTES + 1)
        except (urllib.error.URLError, OSError) as exc:
            raise PaymentError(f"bill download failed: {exc}", code="unreachable") from exc
        if len(data) > MAX_BILL_BYTES:
            raise PaymentError("bill file too large", code="bad_response")
        return parse_bill(data)

    def _call(self, request: Any, response: Any) -> Any:
        """POST one signed request to gateway.do; the verified, parsed response object."""
        params: dict[str, str] = {
            k: v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            for k, v in request.get_params().items()
        }
        method = params["method"]
        # The common parameters exactly as DefaultAlipayClient.__get_common_params sets them.
        params.update(
            app_id=self.config.app_id,
            charset="utf-8",
            format="json",
            sign_type=self.config.sign_type,
            timestamp=dt.datetime.now(BEIJING).strftime(TIME_FORMAT),
        )
        params["sign"] = sign_rsa2(self._private_key, request_sign_content(params))
        body = urllib.parse.urlencode(params).encode("ascii")
        http = urllib.request.Request(  # noqa: S310 - the configured gateway
            self.config.gateway_url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
        )
        try:
            with urllib.request.urlopen(http, timeout=self.config.timeout) as answer:  # noqa: S310
                raw = answer.read(1024 * 1024)
        except urllib.error.HTTPError as exc:
            raise PaymentError(f"{method}: HTTP {exc.code}", code="unreachable") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise PaymentError(f"{method}: {exc}", code="unreachable") from exc
        content = self._verified_content(raw, method)
        response.parse_response_content(content)
        if response.code != "10000":
            code = str(response.sub_code or response.code or "provider_error")
            raise PaymentError(f"{method}: {response.sub_msg or response.msg} ({code})", code=code)
        return response

    def _verified_content(self, raw: bytes, method: str) -> str:
        """The ``<method>_response`` object's text, after checking Alipay's signature on it."""
        try:
            text = raw.decode("utf-8")
            document = json.loads(text)
        except (UnicodeDecodeError, ValueError) as exc:
            raise PaymentError(f"{method}: answer is not JSON", code="bad_response") from exc
        key = method.replace(".", "_") + "_response"
        if not isinstance(document, dict) or not isinstance(
            document.get(key, document.get("error_response")), dict
        ):
            raise PaymentError(f"{method}: answer lacks {key}", code="bad_response")
        # Cut the signed substring as the SDK does (DefaultAlipayClient.__parse_response):
        # from the first "..._response": { to the } before the last ,"sign":".
        begin = PATTERN_RESPONSE_BEGIN.search(text)
        signs = list(PATTERN_RESPONSE_SIGN_BEGIN.finditer(text))
        sign_at = signs[-1] if signs else None
        if begin is None or sign_at is None:
            raise PaymentError(f"{method}: answer is not signed", code="bad_signature")
        content = text[begin.end() - 1 : sign_at.start() + 1]
        sign = text[sign_at.end() : text.find('"', sign_at.end())]
        if not verify_rsa2(self._alipay_public_pem, content.encode("utf-8"), sign):
            raise PaymentError(
                f"{method}: answer's signature does not verify", code="bad_signature"
            )
        signed = json.loads(content)
        # The signed text must be the very object we act on (not a second, unsigned one).
        if signed != document.get(key, document.get("error_response")):
            raise PaymentError(
                f"{method}: signed part differs from the answer", code="bad_signature"
            )
        return content


def parse_notify_form(body: bytes) -> dict[str, str]:
    """A notify's form fields from the raw body, decoded in the charset it names."""
    if len(body) > MAX_NOTIFY_BYTES:
        raise NotifyRejected("notify body too large")
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError as exc:
        # A form-encoded body is percent-encoded ASCII; raw bytes mean something else.
        raise NotifyRejected("notify body is not form-encoded ASCII") from exc
    if not text:
        raise NotifyRejected("empty notify body")
    try:
        first = urllib.parse.parse_qsl(
            text, keep_blank_values=True, strict_parsing=True, encoding="latin-1"
        )
    except ValueError as exc:
        raise NotifyRejected(f"malformed form body: {exc}") from exc
    charset_name = dict(first).get("charset", "utf-8").lower()
    charset = CHARSETS.get(charset_name)
    if charset is None:
        raise NotifyRejected(f"unknown charset {charset_name!r}")
    try:
        pairs = urllib.parse.parse_qsl(
            text, keep_blank_values=True, strict_parsing=True, encoding=charset, errors="strict"
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotifyRejected(f"form body is not valid {charset}: {exc}") from exc
    params: dict[str, str] = {}
    for key, value in pairs:
        if key in params:
            raise NotifyRejected(f"field {key!r} appears twice")
        params[key] = value
    return params


BILL_COLUMNS = {
    "trade_no": "支付宝交易号",
    "order_no": "商户订单号",
    "kind": "业务类型",
    "finished": "完成时间",
    "order_amount": "订单金额（元）",
    "received": "商家实收（元）",
    "refund_no": "退款批次号/请求号",
}


def parse_bill(data: bytes) -> list[BillRow]:
    """BillRows from Alipay's trade bill: a zip holding the GBK 业务明细 CSV (or the CSV)."""
    if data[:2] == b"PK":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                # Pick the 业务明细 file by its table header: Alipay writes the member
                # names in GBK without the zip's UTF-8 flag, so names read as mojibake.
                details = [
                    member
                    for member in (
                        archive.read(n) for n in archive.namelist() if n.endswith(".csv")
                    )
                    if "支付宝交易号".encode("gbk") in member
                ]
        except zipfile.BadZipFile as exc:
            raise PaymentError(f"bill is not a zip: {exc}", code="bad_bill") from exc
        if len(details) != 1:
            raise PaymentError("bill zip lacks exactly one 业务明细 CSV", code="bad_bill")
        data = details[0]
    try:
        text = data.decode("gb18030")  # a superset of GBK: decodes every GBK file
    except UnicodeDecodeError as exc:
        raise PaymentError("bill is not GBK text", code="bad_bill") from exc
    # Alipay frames the table with "#" lines (account, dates, totals) and pads fields
    # with tabs so that spreadsheets keep long numbers as text.
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    rows = list(csv.reader(lines))
    if not rows:
        return []
    header = [cell.strip() for cell in rows[0]]
    try:
        index = {name: header.index(title) for name, title in BILL_COLUMNS.items()}
    except ValueError as exc:
        raise PaymentError(f"bill header lacks a column: {exc}", code="bad_bill") from exc
    result = []
    for row in rows[1:]:
        cells = [cell.strip() for cell in row]
        if len(cells) < len(header):
            raise PaymentError(f"short bill row: {row!r}", code="bad_bill")
        kind = {"交易": "payment", "退款": "refund"}.get(cells[index["kind"]])
        if kind is None:
            continue  # other business types (e.g. 分账) are not ours to reconcile here
        try:
            if kind == "payment":
                amount = yuan_to_fen(cells[index["order_amount"]])
            else:
                amount = yuan_to_fen(cells[index["received"]].lstrip("-"))
            at = beijing_time(cells[index["finished"]])
        except ValueError as exc:
            raise PaymentError(f"bill row {row!r}: {exc}", code="bad_bill") from exc
        result.append(
            BillRow(
                order_no=cells[index["order_no"]],
                provider_trade_no=cells[index["trade_no"]],
                kind=kind,
                amount=amount,
                at=at,
                refund_no=(cells[index["refund_no"]] or None) if kind == "refund" else None,
            )
        )
    return result
