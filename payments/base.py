"""The one provider interface: plain functions over dataclasses, no Flask objects.

Each provider (Alipay, WeChat Pay v3, WeChat Pay v2) implements :class:`Provider`.
Amounts cross this interface as integer fen; each adapter converts at its own edge
(Alipay: yuan string "12.34"; WeChat: integer fen). Times are aware UTC datetimes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol


class PayScene(StrEnum):
    """Where the payer is, which decides how a payment is started."""

    #: Alipay in a phone browser (alipay.trade.wap.pay): redirect to the cashier
    wap = "wap"
    #: inside WeChat (JSAPI): parameters for WeixinJSBridge, needs the payer's openid
    jsapi = "jsapi"
    #: WeChat Pay H5 in a phone browser outside WeChat: redirect to h5_url
    h5 = "h5"
    #: a QR code the payer scans (Alipay precreate / WeChat Native), e.g. at a kiosk
    qr = "qr"


class TradeStatus(StrEnum):
    """A payment's state as the provider reports it, mapped to one vocabulary."""

    paid = "paid"  #: TRADE_SUCCESS / TRADE_FINISHED / SUCCESS
    pending = "pending"  #: WAIT_BUYER_PAY / USERPAYING / NOTPAY
    closed = "closed"  #: TRADE_CLOSED / CLOSED / REVOKED
    failed = "failed"  #: PAYERROR
    refunded = "refunded"  #: REFUND (WeChat: the trade has a refund)
    unknown = "unknown"  #: the provider does not know the trade (yet)


@dataclass(frozen=True)
class PaymentRequest:
    """Start paying for one order."""

    order_no: str
    amount: int  #: fen
    subject: str  #: shown to the payer, e.g. "燃气费 户号10000001 100.00 m³"
    scene: PayScene
    notify_url: str
    return_url: str = ""
    expires_at: dt.datetime | None = None
    payer_openid: str | None = None  #: WeChat JSAPI
    client_ip: str = "127.0.0.1"  #: WeChat H5 needs the payer's IP


@dataclass(frozen=True)
class PaymentStart:
    """What the payer's device does next: exactly one of the fields is set."""

    redirect_url: str | None = None  #: Alipay WAP cashier / WeChat H5 page
    qr_code: str | None = None  #: content to render as a QR code
    jsapi_params: dict[str, str] | None = None  #: for WeixinJSBridge.invoke('getBrandWCPayRequest')


@dataclass(frozen=True)
class NotifyRequest:
    """A provider's server-to-server notify, as received: raw bytes and headers."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)  #: lower-case names
    #: the form fields for form-encoded notifies (Alipay); empty otherwise
    form: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Notification:
    """A verified notify about one trade."""

    order_no: str
    provider_trade_no: str
    status: TradeStatus
    amount: int  #: fen, as the provider reports it (total paid by the payer)
    app_id: str
    merchant_id: str
    paid_at: dt.datetime | None = None


@dataclass(frozen=True)
class NotifyAnswer:
    """The HTTP answer the provider expects for a notify."""

    status: int
    body: bytes
    content_type: str


@dataclass(frozen=True)
class TradeQuery:
    order_no: str
    status: TradeStatus
    amount: int | None = None  #: fen
    provider_trade_no: str | None = None
    paid_at: dt.datetime | None = None


@dataclass(frozen=True)
class RefundRequest:
    order_no: str
    refund_no: str
    refund_amount: int  #: fen
    total_amount: int  #: fen, the order's amount
    reason: str = ""
    notify_url: str = ""


@dataclass(frozen=True)
class RefundResult:
    refund_no: str
    #: "succeeded", "processing" or "failed"
    status: str
    provider_refund_no: str | None = None
    amount: int | None = None  #: fen


@dataclass(frozen=True)
class BillRow:
    """One line of the provider's daily bill (对账单)."""

    order_no: str
    provider_trade_no: str
    kind: str  #: "payment" or "refund"
    amount: int  #: fen, positive
    at: dt.datetime
    refund_no: str | None = None


class PaymentError(Exception):
    """The provider refused a call or could not be reached; nothing was changed by us."""

    def __init__(self, message: str, *, code: str = "provider_error") -> None:
        super().__init__(message)
        self.code = code


class NotifyRejected(Exception):
    """A notify that must not be trusted (bad signature, wrong app, stale, malformed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Provider(Protocol):
    """What every payment provider adapter offers."""

    name: str  #: "alipay", "wechat", "wechat_v2"

    def create_payment(self, request: PaymentRequest) -> PaymentStart: ...

    def parse_notify(self, request: NotifyRequest, *, now: dt.datetime) -> Notification:
        """Verify from the raw body with the provider's key; raise NotifyRejected if not."""
        ...

    def notify_answer(self, ok: bool) -> NotifyAnswer:
        """The answer for a notify we handled (ok) or want retried (not ok)."""
        ...

    def query(self, order_no: str) -> TradeQuery: ...

    def close(self, order_no: str) -> None: ...

    def refund(self, request: RefundRequest) -> RefundResult: ...

    def download_bill(self, day: dt.date) -> list[BillRow]: ...
