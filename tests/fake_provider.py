"""A fake payment provider registered in the app: JSON notifies signed with HMAC-SHA256.

It stands in for a provider in tests of the portal's callback handling; the real
adapters are tested against the sandbox gateways in tests/payments/.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json

from payments.base import (
    BillRow,
    Notification,
    NotifyAnswer,
    NotifyRejected,
    NotifyRequest,
    PaymentRequest,
    PaymentStart,
    RefundRequest,
    RefundResult,
    TradeQuery,
    TradeStatus,
)

KEY = b"fake-provider-key"


def sign(payload: dict[str, object]) -> bytes:
    """A notify body the fake provider would send."""
    body = json.dumps(payload, sort_keys=True).encode()
    mac = hmac.new(KEY, body, hashlib.sha256).hexdigest()
    return json.dumps({"payload": payload, "mac": mac}, sort_keys=True).encode()


class FakeProvider:
    def __init__(self, name: str = "alipay") -> None:
        self.name = name
        self.closed: list[str] = []
        self.queries: dict[str, TradeQuery] = {}

    def create_payment(self, request: PaymentRequest) -> PaymentStart:
        return PaymentStart(redirect_url=f"https://fake.invalid/pay/{request.order_no}")

    def parse_notify(self, request: NotifyRequest, *, now: dt.datetime) -> Notification:
        try:
            outer = json.loads(request.body)
            payload = outer["payload"]
            body = json.dumps(payload, sort_keys=True).encode()
            good = hmac.new(KEY, body, hashlib.sha256).hexdigest()
            if not hmac.compare_digest(good, str(outer["mac"])):
                raise NotifyRejected("bad signature")
            return Notification(
                order_no=str(payload["order_no"]),
                provider_trade_no=str(payload["trade_no"]),
                status=TradeStatus(payload["status"]),
                amount=int(payload["amount"]),
                app_id="fake-app",
                merchant_id="fake-merchant",
                paid_at=now,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise NotifyRejected(f"malformed: {error}") from error

    def notify_answer(self, ok: bool) -> NotifyAnswer:
        return NotifyAnswer(200, b"success" if ok else b"fail", "text/plain")

    def query(self, order_no: str) -> TradeQuery:
        return self.queries.get(order_no, TradeQuery(order_no, TradeStatus.unknown))

    def close(self, order_no: str) -> None:
        self.closed.append(order_no)

    def refund(self, request: RefundRequest) -> RefundResult:
        return RefundResult(request.refund_no, "succeeded", "FR1", request.refund_amount)

    def download_bill(self, day: dt.date) -> list[BillRow]:
        return []
