"""WeChat Pay v3: the wechatpayv3 adapter against the sandbox gateway, over real loopback HTTP.

Nothing in the SDK is mocked: the sandbox is the fake. Every request the SDK signs is
checked by the sandbox with the merchant key; every answer and notify the sandbox signs
is checked by the SDK with the wechatpay public key.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payments.base import (
    NotifyRejected,
    NotifyRequest,
    PaymentError,
    PaymentRequest,
    PayScene,
    RefundRequest,
    TradeStatus,
)
from payments.sandbox import wechat_v3 as sandbox
from payments.sandbox.sender import http_post
from payments.sandbox.store import QueuedNotify, SandboxStore
from payments.wechat_v3 import WechatV3Provider, bill_yuan_to_fen, parse_trade_bill
from tests.http_server import serve

CHINA = dt.timezone(dt.timedelta(hours=8))


# fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> sandbox.SandboxKeys:
    return sandbox.ensure_sandbox_keys(tmp_path_factory.mktemp("wechat_v3") / "keys")


@pytest.fixture(scope="module")
def foreign_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Gateway:
    base: str  #: the sandbox's API base, http://127.0.0.1:PORT/sandbox/wechat
    store: SandboxStore
    keys: sandbox.SandboxKeys
    provider: WechatV3Provider

    @property
    def config(self) -> sandbox.SandboxConfig:
        return self.keys.sandbox_config()


@pytest.fixture(scope="module")
def gateway(
    keys: sandbox.SandboxKeys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """One sandbox for the module (each test uses its own order numbers)."""
    with _running(keys, tmp_path_factory.mktemp("wechat_v3_store")) as running:
        yield running


@contextmanager
def _running(keys: sandbox.SandboxKeys, folder: Path) -> Iterator[Gateway]:
    """The sandbox blueprint on a bare Flask app served on loopback, and an adapter for it."""
    store = SandboxStore(folder / "sandbox.sqlite3")
    app = Flask(__name__)
    app.register_blueprint(sandbox.create_blueprint(store, keys.sandbox_config()))
    with serve(app) as root:
        base = root + "/sandbox/wechat"
        provider = WechatV3Provider(keys.provider_config(base, notify_url=root + "/unused"))
        yield Gateway(base=base, store=store, keys=keys, provider=provider)


def _request(order_no: str, scene: PayScene = PayScene.qr, **overrides: Any) -> PaymentRequest:
    fields: dict[str, Any] = {
        "order_no": order_no,
        "amount": 1234,
        "subject": "燃气费 户号10000001 4.50 m³",
        "scene": scene,
        "notify_url": "http://127.0.0.1:9/payments/wechat/notify",
    }
    fields |= overrides
    return PaymentRequest(**fields)


class _Forms(HTMLParser):
    """The forms of a page as a browser sees them: action and fields."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": values.get("action", ""), "fields": {}, "buttons": {}})
        elif tag == "input" and self.forms:
            self.forms[-1]["fields"][values.get("name", "")] = values.get("value", "")
        elif tag == "button" and self.forms:
            self.forms[-1]["buttons"][values.get("value", "")] = values.get("name", "")


def _press(url: str, button: str) -> str:
    """Open the cashier at ``url`` and press a button, as a browser without JavaScript."""
    page = requests.get(url, timeout=10)
    assert page.status_code == 200
    assert "text/html" in page.headers["Content-Type"]
    parser = _Forms()
    parser.feed(page.text)
    [form] = parser.forms
    data = dict(form["fields"]) | {form["buttons"][button]: button}
    answer = requests.post(urljoin(url, form["action"]), data=data, timeout=10)
    assert answer.status_code == 200
    return answer.text


def _queued(gateway: Gateway, order_no: str) -> NotifyRequest:
    [row] = gateway.store.notifies("wechat", order_no)
    headers = {k.lower(): v for k, v in json.loads(row["headers"]).items()}
    return NotifyRequest(body=bytes(row["body"]), headers=headers)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# create → cashier → notify → query, per scene ----------------------------------------------
def test_qr_payment_paid_at_the_cashier_notifies_and_queries_paid(gateway: Gateway) -> None:
    start = gateway.provider.create_payment(_request("R20261204001"))
    assert start.qr_code is not None and start.redirect_url is None and start.jsapi_params is None
    assert start.qr_code.startswith(gateway.base + "/cashier?prepay_id=wx")
    page = requests.get(start.qr_code, timeout=10).text
    assert "¥12.34" in page and "支付 Pay" in page and "取消 Cancel" in page
    assert 'name="viewport"' in page and "<script" not in page
    assert gateway.provider.query("R20261204001").status is TradeStatus.pending

    assert "支付成功 Paid" in _press(start.qr_code, "pay")

    notification = gateway.provider.parse_notify(_queued(gateway, "R20261204001"), now=_now())
    trade = gateway.store.trade("wechat", "R20261204001")
    assert trade is not None
    assert notification.order_no == "R20261204001"
    assert notification.amount == 1234
    assert notification.status is TradeStatus.paid
    assert notification.provider_trade_no == trade["trade_no"]
    assert notification.app_id == gateway.keys.appid
    assert notification.merchant_id == gateway.keys.mchid
    assert notification.paid_at is not None and abs(notification.paid_at - _now()).seconds < 60

    query = gateway.provider.query("R20261204001")
    assert query.status is TradeStatus.paid
    assert query.amount == 1234
    assert query.provider_trade_no == trade["trade_no"]
    assert query.paid_at == notification.paid_at


def test_h5_payment_redirects_to_the_cashier_and_back(gateway: Gateway) -> None:
    start = gateway.provider.create_payment(
        _request(
            "R20261204002",
            PayScene.h5,
            client_ip="203.0.113.7",
            return_url="https://ranqi.example/orders/R20261204002",
        )
    )
    assert start.redirect_url is not None and start.qr_code is None
    query = parse_qs(urlsplit(start.redirect_url).query)
    assert query["redirect_url"] == ["https://ranqi.example/orders/R20261204002"]
    trade = gateway.store.trade("wechat", "R20261204002")
    assert trade is not None and trade["extra"]["trade_type"] == "MWEB"

    result = _press(start.redirect_url, "pay")
    assert 'href="https://ranqi.example/orders/R20261204002"' in result

    notification = gateway.provider.parse_notify(_queued(gateway, "R20261204002"), now=_now())
    assert (notification.order_no, notification.amount) == ("R20261204002", 1234)


def test_jsapi_payment_gives_bridge_parameters_signed_by_the_merchant(gateway: Gateway) -> None:
    start = gateway.provider.create_payment(
        _request("R20261204003", PayScene.jsapi, payer_openid="oUpF8uMuAJO_M2pxb1Q9zNjWeS6o")
    )
    params = start.jsapi_params
    assert params is not None and start.qr_code is None and start.redirect_url is None
    assert params["appId"] == gateway.keys.appid and params["signType"] == "RSA"
    assert params["package"].startswith("prepay_id=wx")
    # what the WeChat client checks: SHA256-RSA over appId, timeStamp, nonceStr, package
    merchant_public = serialization.load_pem_public_key(
        gateway.keys.merchant_public_key_path.read_bytes()
    )
    assert isinstance(merchant_public, rsa.RSAPublicKey)
    message = "".join(
        params[k] + "\n" for k in ("appId", "timeStamp", "nonceStr", "package")
    ).encode()
    merchant_public.verify(
        base64.b64decode(params["paySign"]), message, padding.PKCS1v15(), hashes.SHA256()
    )

    prepay_id = params["package"].removeprefix("prepay_id=")
    _press(f"{gateway.base}/cashier?prepay_id={prepay_id}", "pay")
    notification = gateway.provider.parse_notify(_queued(gateway, "R20261204003"), now=_now())
    assert notification.order_no == "R20261204003"
    query = gateway.provider.query("R20261204003")
    assert query.status is TradeStatus.paid


def test_jsapi_without_openid_is_refused_before_calling(gateway: Gateway) -> None:
    with pytest.raises(PaymentError) as refused:
        gateway.provider.create_payment(_request("R20261204004", PayScene.jsapi))
    assert refused.value.code == "openid"
    assert gateway.store.trade("wechat", "R20261204004") is None


def test_unknown_order_queries_unknown(gateway: Gateway) -> None:
    assert gateway.provider.query("R20269999999").status is TradeStatus.unknown


# cancel, close, expiry -------------------------------------------------------------------
def test_cancel_leaves_the_trade_unpaid_and_close_closes_it(gateway: Gateway) -> None:
    start = gateway.provider.create_payment(_request("R20261204010"))
    assert start.qr_code is not None
    assert "已取消" in _press(start.qr_code, "cancel")
    assert gateway.provider.query("R20261204010").status is TradeStatus.pending
    assert gateway.store.notifies("wechat", "R20261204010") == []

    gateway.provider.close("R20261204010")
    assert gateway.provider.query("R20261204010").status is TradeStatus.closed
    closed_page = requests.get(start.qr_code, timeout=10).text
    assert "<form" not in closed_page and "CLOSED" in closed_page
    paid = requests.post(f"{gateway.base}/_test/pay", json={"order_no": "R20261204010"}, timeout=10)
    assert paid.status_code == 409


def test_close_of_a_paid_trade_is_refused(gateway: Gateway) -> None:
    gateway.provider.create_payment(_request("R20261204011"))
    _test_pay(gateway, "R20261204011")
    with pytest.raises(PaymentError) as refused:
        gateway.provider.close("R20261204011")
    assert refused.value.code == "ORDERPAID"
    assert gateway.provider.query("R20261204011").status is TradeStatus.paid


def test_an_expired_trade_is_closed(gateway: Gateway) -> None:
    gateway.provider.create_payment(
        _request("R20261204012", expires_at=_now() + dt.timedelta(minutes=15))
    )
    assert gateway.provider.query("R20261204012").status is TradeStatus.pending
    with gateway.store.connect() as conn:  # let the clock pass time_expire
        conn.execute(
            "UPDATE trade SET extra = json_set(extra, '$.time_expire', ?) WHERE order_no = ?",
            ((_now() - dt.timedelta(seconds=1)).isoformat(), "R20261204012"),
        )
    assert gateway.provider.query("R20261204012").status is TradeStatus.closed


# refunds ---------------------------------------------------------------------------------
def _test_pay(gateway: Gateway, order_no: str, amount: int | None = None) -> None:
    payload: dict[str, Any] = {"order_no": order_no}
    if amount is not None:
        payload["amount"] = amount
    answer = requests.post(f"{gateway.base}/_test/pay", json=payload, timeout=10)
    assert answer.status_code == 200, answer.text


def test_refund_part_then_refuse_more_than_is_left(gateway: Gateway) -> None:
    gateway.provider.create_payment(_request("R20261204020"))
    _test_pay(gateway, "R20261204020")
    result = gateway.provider.refund(
        RefundRequest("R20261204020", "F20261204020A", refund_amount=1000, total_amount=1234)
    )
    assert result.status == "succeeded"
    assert result.amount == 1000 and result.refund_no == "F20261204020A"
    assert result.provider_refund_no and result.provider_refund_no.startswith("50")
    assert gateway.provider.query("R20261204020").status is TradeStatus.refunded

    with pytest.raises(PaymentError) as refused:
        gateway.provider.refund(
            RefundRequest("R20261204020", "F20261204020B", refund_amount=235, total_amount=1234)
        )
    assert refused.value.code == "INVALID_REQUEST"
    assert gateway.store.refunded_total("wechat", "R20261204020") == 1000
    # the same refund number again is the same refund, not a second one
    again = gateway.provider.refund(
        RefundRequest("R20261204020", "F20261204020A", refund_amount=1000, total_amount=1234)
    )
    assert again.provider_refund_no == result.provider_refund_no
    assert gateway.store.refunded_total("wechat", "R20261204020") == 1000


def test_refund_above_the_amount_is_refused(gateway: Gateway) -> None:
    gateway.provider.create_payment(_request("R20261204021"))
    _test_pay(gateway, "R20261204021")
    with pytest.raises(PaymentError):
        gateway.provider.refund(
            RefundRequest("R20261204021", "F20261204021", refund_amount=1235, total_amount=1234)
        )
    assert gateway.store.refunded_total("wechat", "R20261204021") == 0


def test_refund_of_an_unpaid_trade_is_refused(gateway: Gateway) -> None:
    gateway.provider.create_payment(_request("R20261204022"))
    with pytest.raises(PaymentError):
        gateway.provider.refund(
            RefundRequest("R20261204022", "F20261204022", refund_amount=100, total_amount=1234)
        )


# the bill --------------------------------------------------------------------------------
def test_bill_lists_the_days_payments_and_refunds(gateway: Gateway) -> None:
    for order_no, amount in (("R20261204030", 1234), ("R20261204031", 50001)):
        gateway.provider.create_payment(_request(order_no, amount=amount))
        _test_pay(gateway, order_no)
    gateway.provider.refund(
        RefundRequest("R20261204031", "F20261204031", refund_amount=20001, total_amount=50001)
    )
    today = _now().astimezone(CHINA).date()
    rows = [
        r
        for r in gateway.provider.download_bill(today)
        if r.order_no in ("R20261204030", "R20261204031")
    ]
    got = {(r.kind, r.order_no, r.amount, r.refund_no) for r in rows}
    assert len(rows) == len(got)
    assert got == {
        ("payment", "R20261204030", 1234, None),
        ("payment", "R20261204031", 50001, None),
        ("refund", "R20261204031", 20001, "F20261204031"),
    }
    trade = gateway.store.trade("wechat", "R20261204030")
    assert trade is not None
    [first] = [r for r in rows if r.order_no == "R20261204030"]
    assert first.provider_trade_no == trade["trade_no"]
    assert abs(first.at - _now()) < dt.timedelta(minutes=1)
    assert gateway.provider.download_bill(today - dt.timedelta(days=1)) == []


def test_bill_parser_reads_wechat_shape_exactly() -> None:
    bill = (
        "交易时间,公众账号ID,商户号,特约商户号,设备号,微信订单号,商户订单号,用户标识,交易类型,"
        "交易状态,付款银行,货币种类,应结订单金额,代金券金额,微信退款单号,商户退款单号,退款金额,"
        "充值券退款金额,退款类型,退款状态,商品名称,商户数据包,手续费,费率,订单金额,申请退款金额,"
        "费率备注\r\n"
        "`2026-12-04 09:30:00,`wx1,`1900000109,`0,`,`4200000001,`R1,`o1,`NATIVE,`SUCCESS,"
        "`OTHERS,`CNY,`0.10,`0.00,`0,`0,`0.00,`0.00,`,`,`gas,`,`0.00000,`0.60%,`0.10,`0.00,`\r\n"
        "总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额\r\n"
        "`1,`0.10,`0.00,`0.00,`0.00000,`0.10,`0.00\r\n"
    )
    [row] = parse_trade_bill(bill)
    assert (row.order_no, row.provider_trade_no, row.kind, row.amount) == (
        "R1",
        "4200000001",
        "payment",
        10,
    )
    assert row.at == dt.datetime(2026, 12, 4, 1, 30, tzinfo=dt.UTC)
    assert bill_yuan_to_fen("`12345678.91") == 1234567891
    for bad in ("0.001", "abc", "NaN", "Infinity"):
        with pytest.raises(ValueError):
            bill_yuan_to_fen(bad)


# answers and delivery ------------------------------------------------------------------
def test_notify_answer_is_what_wechat_expects(gateway: Gateway) -> None:
    ok = gateway.provider.notify_answer(True)
    assert (ok.status, ok.body) == (204, b"")
    assert sandbox.accepted(ok.status, ok.body)
    failed = gateway.provider.notify_answer(False)
    assert failed.status == 500
    assert json.loads(failed.body) == {"code": "FAIL", "message": "失败"}
    assert failed.content_type == "application/json"
    assert not sandbox.accepted(failed.status, failed.body)
    assert sandbox.accepted(200, b"") and not sandbox.accepted(400, b"")


@dataclass
class Merchant:
    """A notify endpoint that verifies with the adapter and fails the first ``failures``."""

    provider: WechatV3Provider
    failures: int
    received: list[Any] = field(default_factory=list)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        try:
            notification = self.provider.parse_notify(
                NotifyRequest(body=body, headers=headers), now=_now()
            )
        except NotifyRejected as rejected:
            notification = rejected
        self.received.append(notification)
        # a verified notify is still answered "not ok" the first times (the database is down)
        ok = not isinstance(notification, NotifyRejected) and len(self.received) > self.failures
        answer = self.provider.notify_answer(ok)
        start_response(f"{answer.status} X", [("Content-Type", answer.content_type)])
        return [answer.body]


def test_notify_is_delivered_over_http_and_retried_on_failure(
    keys: sandbox.SandboxKeys, tmp_path: Path
) -> None:
    # a sandbox of its own: deliver_due posts every due notify in its store
    with _running(keys, tmp_path) as gateway:
        merchant = Merchant(gateway.provider, failures=1)
        with serve(merchant) as merchant_url:
            gateway.provider.create_payment(
                _request("R20261204040", notify_url=merchant_url + "/payments/wechat/notify")
            )
            _test_pay(gateway, "R20261204040")

            def post(item: QueuedNotify) -> tuple[bool, str]:
                return http_post(item, sandbox.accepted)

            schedules = {"wechat": sandbox.SCHEDULE}
            start = _now()
            assert gateway.store.deliver_due(post, schedules, now=start) == 1
            [row] = gateway.store.notifies("wechat", "R20261204040")
            assert row["delivered_at"] is None and row["attempts"] == 1
            assert row["last_answer"].startswith("500")
            next_at = dt.datetime.fromisoformat(row["next_at"])
            assert next_at - start == dt.timedelta(seconds=sandbox.SCHEDULE[0])
            # not due yet; due after the first wait
            assert gateway.store.deliver_due(post, schedules, now=start) == 0
            later = start + dt.timedelta(seconds=16)
            assert gateway.store.deliver_due(post, schedules, now=later) == 1
            [row] = gateway.store.notifies("wechat", "R20261204040")
            assert row["delivered_at"] is not None and row["attempts"] == 2
            assert row["last_answer"].startswith("204")
    assert [n.order_no for n in merchant.received] == ["R20261204040"] * 2


def test_a_late_retry_needs_fresh_signature_headers(gateway: Gateway) -> None:
    gateway.provider.create_payment(_request("R20261204041"))
    _test_pay(gateway, "R20261204041")
    queued = _queued(gateway, "R20261204041")
    # the store keeps the first attempt's headers; ten minutes on they are stale
    with pytest.raises(NotifyRejected, match="5 minutes"):
        gateway.provider.parse_notify(queued, now=_now() + dt.timedelta(minutes=10))
    fresh = {k.lower(): v for k, v in sandbox.resign_notify(gateway.config, queued.body).items()}
    again = gateway.provider.parse_notify(replace(queued, headers=fresh), now=_now())
    assert again.order_no == "R20261204041"


def test_test_hook_pays_another_amount_for_conflict_tests(gateway: Gateway) -> None:
    gateway.provider.create_payment(_request("R20261204042"))
    _test_pay(gateway, "R20261204042", amount=999)
    notification = gateway.provider.parse_notify(_queued(gateway, "R20261204042"), now=_now())
    assert notification.amount == 999
    assert gateway.provider.query("R20261204042").amount == 999


# the two sides check each other's keys ---------------------------------------------------
def test_sandbox_refuses_requests_signed_by_another_merchant_key(
    gateway: Gateway, tmp_path: Path, foreign_key: rsa.RSAPrivateKey
) -> None:
    pem = foreign_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    (tmp_path / "other.pem").write_bytes(pem)
    impostor = WechatV3Provider(
        replace(gateway.provider.config, merchant_private_key_path=tmp_path / "other.pem")
    )
    with pytest.raises(PaymentError) as refused:
        impostor.create_payment(_request("R20261204050"))
    assert refused.value.code == "SIGN_ERROR"
    assert gateway.store.trade("wechat", "R20261204050") is None


def test_adapter_refuses_answers_signed_by_another_platform_key(
    gateway: Gateway, tmp_path: Path, foreign_key: rsa.RSAPrivateKey
) -> None:
    pem = foreign_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "other_public.pem").write_bytes(pem)
    trusting_another = WechatV3Provider(
        replace(gateway.provider.config, wechatpay_public_key_path=tmp_path / "other_public.pem")
    )
    gateway.provider.create_payment(_request("R20261204051"))
    assert gateway.provider.query("R20261204051").status is TradeStatus.pending
    with pytest.raises(PaymentError, match="signature") as refused:
        trusting_another.query("R20261204051")
    assert refused.value.code == "bad_answer"


# notify refusals -----------------------------------------------------------------------
def _transaction(gateway: Gateway, **overrides: Any) -> dict[str, Any]:
    transaction: dict[str, Any] = {
        "appid": gateway.keys.appid,
        "mchid": gateway.keys.mchid,
        "out_trade_no": "R20261204060",
        "transaction_id": "4200000000000000000000000060",
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "success_time": "2026-12-04T16:00:00+08:00",
        "payer": {"openid": "o1"},
        "amount": {"total": 1234, "payer_total": 1234, "currency": "CNY", "payer_currency": "CNY"},
    }
    return transaction | overrides


def _notify(gateway: Gateway, **overrides: Any) -> NotifyRequest:
    body, headers = sandbox.build_notify(gateway.config, _transaction(gateway, **overrides))
    return NotifyRequest(body=body, headers={k.lower(): v for k, v in headers.items()})


def _signed(gateway: Gateway, body: bytes, key: rsa.RSAPrivateKey | None = None) -> NotifyRequest:
    """``body`` with headers signed by ``key`` (default: the sandbox's platform key)."""
    headers = sandbox.signed_headers(gateway.config, body)
    if key is not None:
        headers["Wechatpay-Signature"] = sandbox.sign_message(
            key, headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"], body.decode()
        )
    return NotifyRequest(body=body, headers={k.lower(): v for k, v in headers.items()})


def test_a_genuine_built_notify_is_accepted(gateway: Gateway) -> None:
    notification = gateway.provider.parse_notify(_notify(gateway), now=_now())
    assert notification.order_no == "R20261204060"
    assert notification.paid_at == dt.datetime(2026, 12, 4, 8, 0, tzinfo=dt.UTC)


def _flip(body: bytes) -> bytes:
    position = body.index(b'"summary"') + 2
    return body[:position] + bytes([body[position] ^ 0x01]) + body[position + 1 :]


def _bad_tag(gateway: Gateway) -> NotifyRequest:
    envelope = json.loads(_notify(gateway).body)
    sealed = bytearray(base64.b64decode(envelope["resource"]["ciphertext"]))
    sealed[-1] ^= 0x01  # the last 16 bytes are the GCM tag
    envelope["resource"]["ciphertext"] = base64.b64encode(bytes(sealed)).decode()
    return _signed(gateway, json.dumps(envelope, ensure_ascii=False).encode())


def _without(request: NotifyRequest, name: str) -> NotifyRequest:
    return replace(request, headers={k: v for k, v in request.headers.items() if k != name})


def _with(request: NotifyRequest, name: str, value: str) -> NotifyRequest:
    return replace(request, headers=request.headers | {name: value})


REFUSALS: dict[str, tuple[Any, str]] = {
    "flipped byte": (lambda g, k: replace(_notify(g), body=_flip(_notify(g).body)), "signature"),
    "foreign key": (lambda g, k: _signed(g, _notify(g).body, k), "signature"),
    "missing signature": (
        lambda g, k: _without(_notify(g), "wechatpay-signature"),
        "missing",
    ),
    "empty headers": (lambda g, k: replace(_notify(g), headers={}), "missing"),
    "signature not base64": (
        lambda g, k: _with(_notify(g), "wechatpay-signature", "!!not base64!!"),
        "signature",
    ),
    "unknown serial": (
        lambda g, k: _with(_notify(g), "wechatpay-serial", "5157F09EFDC096DE15EBE81A47057A72"),
        "Wechatpay-Serial",
    ),
    "wrong appid": (lambda g, k: _notify(g, appid="wx0000000000000000"), "appid"),
    "wrong mchid": (lambda g, k: _notify(g, mchid="1900000000"), "mchid"),
    "malformed body": (lambda g, k: _signed(g, b"{not json"), "JSON"),
    "not an encrypted resource": (
        lambda g, k: _signed(g, b'{"resource_type": "plain", "resource": {}}'),
        "encrypted resource",
    ),
    "bad AES-GCM tag": (lambda g, k: _bad_tag(g), "AES-GCM"),
    "timestamp not a number": (
        lambda g, k: _with(_notify(g), "wechatpay-timestamp", "soon"),
        "not a number",
    ),
    "timestamp in other digits": (
        lambda g, k: _with(_notify(g), "wechatpay-timestamp", "１７６４８６４０００"),
        "not a number",
    ),
    "timestamp superscript": (
        lambda g, k: _with(_notify(g), "wechatpay-timestamp", "²"),
        "not a number",
    ),
    "amount not whole fen": (
        lambda g, k: _notify(g, amount={"total": 12.34, "currency": "CNY"}),
        "malformed",
    ),
    "refund event": (
        lambda g, k: _signed(g, _notify(g).body.replace(b"TRANSACTION.", b"REFUND.")),
        "payment notify",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_untrusted_notifies_are_refused_with_a_reason(
    gateway: Gateway, foreign_key: rsa.RSAPrivateKey, case: str
) -> None:
    make, reason = REFUSALS[case]
    with pytest.raises(NotifyRejected) as rejected:
        gateway.provider.parse_notify(make(gateway, foreign_key), now=_now())
    assert reason in rejected.value.reason


@pytest.mark.parametrize("skew", [dt.timedelta(minutes=-6), dt.timedelta(minutes=6)])
def test_notify_outside_five_minutes_is_refused(gateway: Gateway, skew: dt.timedelta) -> None:
    request = _notify(gateway)
    with pytest.raises(NotifyRejected, match="5 minutes"):
        gateway.provider.parse_notify(request, now=_now() + skew)
    # and just inside the window it is fine
    inside = skew * 4 / 6
    assert gateway.provider.parse_notify(request, now=_now() + inside).order_no == "R20261204060"


# arbitrary input: a Notification only for genuinely signed input -----------------------------
HEADER_NAMES = [
    "wechatpay-signature",
    "wechatpay-timestamp",
    "wechatpay-nonce",
    "wechatpay-serial",
    "wechatpay-signature-type",
]


@pytest.fixture(scope="module")
def genuine(keys: sandbox.SandboxKeys) -> NotifyRequest:
    """One genuine notify, signed now (the module's tests run within five minutes)."""
    transaction = {
        "appid": keys.appid,
        "mchid": keys.mchid,
        "out_trade_no": "R20261204070",
        "transaction_id": "4200000000000000000000000070",
        "trade_state": "SUCCESS",
        "success_time": "2026-12-04T16:00:00+08:00",
        "amount": {"total": 1, "payer_total": 1, "currency": "CNY"},
    }
    body, headers = sandbox.build_notify(keys.sandbox_config(), transaction)
    return NotifyRequest(body=body, headers={k.lower(): v for k, v in headers.items()})


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_arbitrary_input_is_a_notification_only_when_genuine(
    gateway: Gateway, genuine: NotifyRequest, data: st.DataObject
) -> None:
    body = data.draw(
        st.one_of(
            st.binary(max_size=300),
            st.just(genuine.body),
            st.builds(
                lambda i, b: genuine.body[:i] + bytes([b]) + genuine.body[i + 1 :],
                st.integers(0, len(genuine.body) - 1),
                st.integers(0, 255),
            ),
            st.text(max_size=200).map(str.encode),
        ),
        label="body",
    )
    headers = data.draw(
        st.one_of(
            st.just(dict(genuine.headers)),
            st.dictionaries(st.sampled_from(HEADER_NAMES), st.text(max_size=40)),
            st.builds(
                lambda name, value: genuine.headers | {name: value},
                st.sampled_from(HEADER_NAMES),
                st.text(max_size=400),
            ),
        ),
        label="headers",
    )
    request = NotifyRequest(body=body, headers=headers)
    try:
        notification = gateway.provider.parse_notify(request, now=_now())
    except NotifyRejected:
        assert (body, headers) != (genuine.body, genuine.headers)
        return
    assert body == genuine.body
    assert {k: headers[k] for k in HEADER_NAMES[:4]} == {
        k: genuine.headers[k] for k in HEADER_NAMES[:4]
    }
    assert notification.order_no == "R20261204070"


# keys ------------------------------------------------------------------------------------
def test_sandbox_keys_are_made_once_and_kept(tmp_path: Path) -> None:
    first = sandbox.ensure_sandbox_keys(tmp_path / "keys")
    pem = first.merchant_private_key_path.read_bytes()
    second = sandbox.ensure_sandbox_keys(tmp_path / "keys")
    assert second == first
    assert second.merchant_private_key_path.read_bytes() == pem
    assert first.merchant_private_key_path.stat().st_mode & 0o077 == 0
    assert first.apiv3_key_path.stat().st_mode & 0o077 == 0
    assert len(first.apiv3_key_path.read_text()) == 32
    assert first.wechatpay_public_key_id.startswith("PUB_KEY_ID_")
    assert b"BEGIN PUBLIC KEY" in first.wechatpay_public_key_path.read_bytes()
