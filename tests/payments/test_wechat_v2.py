"""WeChat Pay v2 adapter (wechatpy) against the local v2 sandbox, over real loopback HTTP.

Nothing in wechatpy is patched: the adapter's WeChatPay client points its API_BASE_URL at
the sandbox blueprint served by tests/http_server.serve, and the sandbox signs with its
own implementation of WeChat's sign rules, so the two cross-check each other.
"""

from __future__ import annotations

import datetime as dt
import os
import stat
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
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
from payments.sandbox import wechat_v2 as sandbox
from payments.sandbox.store import QueuedNotify, SandboxStore
from payments.wechat_v2 import (
    CHINA,
    HMAC_SHA256,
    MD5,
    WechatV2Config,
    WechatV2Provider,
    bill_yuan_to_fen,
    parse_bill,
    parse_xml,
    wire_to_fen,
)
from tests.http_server import serve

PREFIX = "/sandbox/wechat_v2"
NOW = dt.datetime(2026, 12, 4, 8, 0, tzinfo=dt.UTC)  # v2 notifies carry no time to check
OK_ANSWER = (
    b"<xml><return_code><![CDATA[SUCCESS]]></return_code>"
    b"<return_msg><![CDATA[OK]]></return_msg></xml>"
)


# -- fixtures --------------------------------------------------------------------------
@dataclass
class Sandbox:
    url: str  #: where the blueprint is mounted
    store: SandboxStore
    keys: sandbox.SandboxKeys
    api_key: str

    def provider(self, sign_type: str = HMAC_SHA256, **changes: Any) -> WechatV2Provider:
        config = self.keys.adapter_config(self.url, "http://127.0.0.1:9/notify", sign_type)
        return WechatV2Provider(replace(config, **changes))


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    folder = tmp_path_factory.mktemp("wechat_v2")
    keys = sandbox.ensure_sandbox_keys(folder / "keys")
    store = SandboxStore(folder / "sandbox.sqlite3")
    app = Flask(__name__)
    app.register_blueprint(
        sandbox.create_blueprint(store, keys.sandbox_config()), url_prefix=PREFIX
    )
    with serve(app) as base:
        api_key = keys.api_key_path.read_text().strip()
        yield Sandbox(url=base + PREFIX, store=store, keys=keys, api_key=api_key)


@pytest.fixture(params=[HMAC_SHA256, MD5])
def provider(request: pytest.FixtureRequest, gateway: Sandbox) -> WechatV2Provider:
    return gateway.provider(request.param)


_counter = iter(range(10**9))


def order_no() -> str:
    return f"RQ{os.getpid()}T{next(_counter):06d}"


def payment(scene: PayScene = PayScene.qr, **overrides: Any) -> PaymentRequest:
    fields: dict[str, Any] = {
        "order_no": order_no(),
        "amount": 1234,
        "subject": "燃气费 户号10000001 3.50 m³",
        "scene": scene,
        "notify_url": "http://127.0.0.1:9/payments/wechat-v2/notify",
        "client_ip": "127.0.0.1",
    }
    if scene is PayScene.jsapi:
        fields["payer_openid"] = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
    fields.update(overrides)
    return PaymentRequest(**fields)


class FormReader(HTMLParser):
    """The cashier page's form as a browser sees it: action, hidden fields, buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.buttons: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action", "")
        elif tag == "input" and a.get("type") == "hidden":
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "button":
            self.buttons[a["value"]] = a["name"]


def press(page_url: str, button: str) -> requests.Response:
    """Open the cashier page and press 支付 Pay / 取消 Cancel like a browser without JS."""
    page = requests.get(page_url, timeout=5)
    assert page.status_code == 200
    form = FormReader()
    form.feed(page.text)
    assert form.action is not None, "no form on the cashier page"
    data = {**form.fields, form.buttons[button]: button}
    target = urljoin(page.url, form.action)  # no action: the page's own URL
    return requests.post(target, data=data, timeout=5, allow_redirects=False)


def only_notify(gateway: Sandbox, order: str) -> dict[str, Any]:
    notifies = gateway.store.notifies(sandbox.PROVIDER, order)
    assert len(notifies) == 1
    return notifies[0]


def notify_request(body: bytes) -> NotifyRequest:
    return NotifyRequest(body=body, headers={"content-type": "text/xml"})


def resign(fields: dict[str, str], key: str, sign_type: str = HMAC_SHA256) -> bytes:
    signed = {k: v for k, v in fields.items() if k != "sign"}
    signed["sign"] = sandbox.wechat_sign(signed, key, sign_type)
    return sandbox.to_xml(signed)


@pytest.fixture(scope="module")
def signed_notify(gateway: Sandbox) -> bytes:
    """One genuine notify body from the sandbox (HMAC-SHA256)."""
    prov = gateway.provider()
    req = payment()
    start = prov.create_payment(req)
    assert start.qr_code is not None
    assert press(start.qr_code, "pay").status_code == 200
    return bytes(only_notify(gateway, req.order_no)["body"])


# -- create → cashier → notify → query -----------------------------------------------------
def test_qr_payment_from_cashier_to_verified_notify_and_query(
    gateway: Sandbox, provider: WechatV2Provider
) -> None:
    req = payment(PayScene.qr)
    start = provider.create_payment(req)
    assert start.qr_code is not None and start.redirect_url is None
    assert start.qr_code.startswith(gateway.url + "/cashier?prepay_id=wx")

    page = requests.get(start.qr_code, timeout=5)
    assert "支付 Pay" in page.text and "取消 Cancel" in page.text
    assert "¥12.34" in page.text and 'name="viewport"' in page.text
    assert provider.query(req.order_no).status is TradeStatus.pending

    done = press(start.qr_code, "pay")
    assert done.status_code == 200 and "支付成功 Paid" in done.text

    queued = only_notify(gateway, req.order_no)
    assert queued["url"] == req.notify_url
    fields = parse_xml(bytes(queued["body"]))
    assert fields["sign_type"] == provider.config.sign_type  # the order's sign type
    assert fields["trade_type"] == "NATIVE"
    note = provider.parse_notify(notify_request(bytes(queued["body"])), now=NOW)
    assert note.order_no == req.order_no
    assert note.amount == 1234
    assert note.status is TradeStatus.paid
    assert note.app_id == sandbox.SANDBOX_APPID and note.merchant_id == sandbox.SANDBOX_MCH_ID
    assert note.provider_trade_no.startswith("4200") and len(note.provider_trade_no) == 28
    assert note.paid_at is not None
    assert abs(note.paid_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)

    query = provider.query(req.order_no)
    assert query.status is TradeStatus.paid
    assert query.amount == 1234
    assert query.provider_trade_no == note.provider_trade_no
    assert query.paid_at == note.paid_at

    # paying twice does not pay twice
    assert "<form" not in requests.get(start.qr_code, timeout=5).text
    prepay_id = parse_qs(urlsplit(start.qr_code).query)["prepay_id"][0]
    again = requests.post(start.qr_code, data={"prepay_id": prepay_id, "action": "pay"}, timeout=5)
    assert "Already paid or closed" in again.text
    assert len(gateway.store.notifies(sandbox.PROVIDER, req.order_no)) == 1


def test_h5_payment_redirects_to_cashier_and_back(
    gateway: Sandbox, provider: WechatV2Provider
) -> None:
    back = "http://127.0.0.1:9/orders/42?paid=1"
    req = payment(PayScene.h5, return_url=back)
    start = provider.create_payment(req)
    assert start.redirect_url is not None and start.qr_code is None
    query = parse_qs(urlsplit(start.redirect_url).query)
    assert query["redirect_url"] == [back]  # WeChat's way back after an H5 payment
    assert query["prepay_id"][0].startswith("wx")

    answer = press(start.redirect_url, "pay")
    assert answer.status_code == 303 and answer.headers["Location"] == back
    note = provider.parse_notify(
        notify_request(bytes(only_notify(gateway, req.order_no)["body"])), now=NOW
    )
    assert (note.order_no, note.amount, note.status) == (req.order_no, 1234, TradeStatus.paid)
    assert parse_xml(bytes(only_notify(gateway, req.order_no)["body"]))["trade_type"] == "MWEB"


def test_jsapi_params_are_signed_like_the_order_and_open_the_cashier(
    gateway: Sandbox, provider: WechatV2Provider
) -> None:
    req = payment(PayScene.jsapi)
    start = provider.create_payment(req)
    params = start.jsapi_params
    assert params is not None and start.redirect_url is None and start.qr_code is None
    assert set(params) == {"appId", "timeStamp", "nonceStr", "package", "signType", "paySign"}
    assert params["appId"] == sandbox.SANDBOX_APPID
    assert params["package"].startswith("prepay_id=wx")
    assert params["signType"] == provider.config.sign_type
    # the sandbox's own sign implementation agrees with wechatpy's
    unsigned = {k: v for k, v in params.items() if k != "paySign"}
    expected = sandbox.wechat_sign(unsigned, gateway.api_key, params["signType"])
    assert params["paySign"] == expected

    forged = {**params, "paySign": "0" * len(params["paySign"])}
    refused = requests.get(sandbox.jsapi_cashier_url(gateway.url, forged), timeout=5)
    assert refused.status_code == 400

    opened = requests.get(sandbox.jsapi_cashier_url(gateway.url, params), timeout=5)
    assert opened.status_code == 200 and "支付 Pay" in opened.text
    press(opened.url, "pay")
    body = bytes(only_notify(gateway, req.order_no)["body"])
    assert parse_xml(body)["openid"] == req.payer_openid
    assert parse_xml(body)["trade_type"] == "JSAPI"
    note = provider.parse_notify(notify_request(body), now=NOW)
    assert (note.order_no, note.amount) == (req.order_no, 1234)


def test_scenes_and_amounts_the_adapter_refuses(gateway: Sandbox) -> None:
    prov = gateway.provider()
    with pytest.raises(PaymentError) as no_openid:
        prov.create_payment(payment(PayScene.jsapi, payer_openid=None))
    assert no_openid.value.code == "openid"
    with pytest.raises(PaymentError) as wap:
        prov.create_payment(payment(PayScene.wap))
    assert wap.value.code == "scene"
    with pytest.raises(PaymentError) as zero:
        prov.create_payment(payment(amount=0))
    assert zero.value.code == "amount"


def test_a_foreign_api_key_is_refused_by_the_gateway(gateway: Sandbox, tmp_path: Path) -> None:
    other = tmp_path / "other_key.txt"
    other.write_text("A" * 32)
    prov = gateway.provider(api_key_path=other)
    with pytest.raises(PaymentError, match="签名错误"):
        prov.create_payment(payment())


def test_answers_with_a_bad_sign_are_refused(gateway: Sandbox) -> None:
    """wechatpy does not check answers' signs; the adapter must."""
    prov_config = gateway.keys.adapter_config("", "http://127.0.0.1:9/n")

    def liar(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        fields = {
            "return_code": "SUCCESS",
            "result_code": "SUCCESS",
            "appid": prov_config.appid,
            "mch_id": prov_config.mch_id,
            "out_trade_no": "X1",
            "trade_state": "SUCCESS",
            "total_fee": "1",
        }
        body = resign(fields, "B" * 32, MD5)  # signed, but not with the merchant's key
        start_response("200 OK", [("Content-Type", "text/xml")])
        return [body]

    def html(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/html")])
        return [b"<html><body>maintenance</body></html>"]

    def text(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"maintenance"]

    with serve(liar) as base:
        prov = WechatV2Provider(replace(prov_config, api_base_url=base))
        with pytest.raises(PaymentError) as err:
            prov.query("X1")
    assert err.value.code == "bad_sign"
    for page in (html, text):  # neither is a v2 answer
        with serve(page) as base:
            prov = WechatV2Provider(replace(prov_config, api_base_url=base))
            with pytest.raises(PaymentError) as err:
                prov.query("X1")
        assert err.value.code == "malformed"


def test_cancel_leaves_the_trade_unpaid(gateway: Sandbox, provider: WechatV2Provider) -> None:
    req = payment()
    start = provider.create_payment(req)
    assert start.qr_code is not None
    answer = press(start.qr_code, "cancel")
    assert "已取消支付 Payment cancelled" in answer.text
    assert gateway.store.notifies(sandbox.PROVIDER, req.order_no) == []
    assert provider.query(req.order_no).status is TradeStatus.pending


def test_repeated_unified_order_reuses_the_prepay_and_refuses_changes(
    gateway: Sandbox,
) -> None:
    prov = gateway.provider()
    req = payment()
    first = prov.create_payment(req)
    assert prov.create_payment(req) == first
    with pytest.raises(PaymentError) as changed:
        prov.create_payment(replace(req, amount=999))
    assert changed.value.code == "INVALID_REQUEST"
    assert first.qr_code is not None
    press(first.qr_code, "pay")
    with pytest.raises(PaymentError) as paid:
        prov.create_payment(req)
    assert paid.value.code == "ORDERPAID"


def test_an_expired_order_cannot_be_paid(gateway: Sandbox) -> None:
    prov = gateway.provider()
    req = payment(expires_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1))
    start = prov.create_payment(req)
    assert start.qr_code is not None
    page = requests.get(start.qr_code, timeout=5)
    assert "订单已过期 Order expired" in page.text and "<form" not in page.text
    prepay_id = parse_qs(urlsplit(start.qr_code).query)["prepay_id"][0]
    forced = requests.post(start.qr_code, data={"prepay_id": prepay_id, "action": "pay"}, timeout=5)
    assert "订单已过期" in forced.text
    assert prov.query(req.order_no).status is TradeStatus.pending
    assert gateway.store.notifies(sandbox.PROVIDER, req.order_no) == []


def test_query_of_an_unknown_order(provider: WechatV2Provider) -> None:
    assert provider.query("RQ-NEVER-PLACED").status is TradeStatus.unknown


# -- close ---------------------------------------------------------------------------------
def test_close_an_unpaid_trade(gateway: Sandbox, provider: WechatV2Provider) -> None:
    req = payment()
    start = provider.create_payment(req)
    provider.close(req.order_no)
    assert provider.query(req.order_no).status is TradeStatus.closed
    provider.close(req.order_no)  # closing again is done already
    assert start.qr_code is not None
    page = requests.get(start.qr_code, timeout=5)
    assert "订单已关闭 Order closed" in page.text and "<form" not in page.text
    with pytest.raises(PaymentError) as reopen:
        provider.create_payment(req)
    assert reopen.value.code == "ORDERCLOSED"


def test_close_refuses_a_paid_trade(gateway: Sandbox, provider: WechatV2Provider) -> None:
    req = payment()
    start = provider.create_payment(req)
    assert start.qr_code is not None
    press(start.qr_code, "pay")
    with pytest.raises(PaymentError) as err:
        provider.close(req.order_no)
    assert err.value.code == "ORDERPAID"
    assert provider.query(req.order_no).status is TradeStatus.paid


# -- refund --------------------------------------------------------------------------------
def test_refund_and_refund_above_the_amount(gateway: Sandbox, provider: WechatV2Provider) -> None:
    req = payment(amount=1000)
    provider.create_payment(req)
    with pytest.raises(PaymentError) as unpaid:
        provider.refund(RefundRequest(req.order_no, req.order_no + "R0", 100, 1000))
    assert unpaid.value.code == "TRADE_STATE_ERROR"

    paid = requests.post(gateway.url + "/_test/pay", json={"order_no": req.order_no}, timeout=5)
    assert paid.status_code == 200
    result = provider.refund(RefundRequest(req.order_no, req.order_no + "R1", 600, 1000, "测试"))
    assert result.status == "succeeded"
    assert result.amount == 600 and result.refund_no == req.order_no + "R1"
    assert result.provider_refund_no is not None and result.provider_refund_no.startswith("50")
    # the same refund number again is the same refund, not a second one
    assert provider.refund(RefundRequest(req.order_no, req.order_no + "R1", 600, 1000)) == result

    with pytest.raises(PaymentError) as above:
        provider.refund(RefundRequest(req.order_no, req.order_no + "R2", 401, 1000))
    assert above.value.code == "ERROR" and "累计退款金额大于支付金额" in str(above.value)
    assert gateway.store.refunded_total(sandbox.PROVIDER, req.order_no) == 600

    with pytest.raises(PaymentError) as wrong_total:
        provider.refund(RefundRequest(req.order_no, req.order_no + "R3", 100, 999))
    assert wrong_total.value.code == "INVALID_REQUEST"

    rest = provider.refund(RefundRequest(req.order_no, req.order_no + "R4", 400, 1000))
    assert rest.status == "succeeded" and rest.amount == 400
    assert provider.query(req.order_no).status is TradeStatus.refunded


# -- bill ----------------------------------------------------------------------------------
def test_download_bill_lists_payments_and_refunds(gateway: Sandbox) -> None:
    prov = gateway.provider(MD5)
    paid, refunded = payment(amount=1234, subject="燃气费, 逗号`反引号"), payment(amount=500)
    for req in (paid, refunded):
        prov.create_payment(req)
        requests.post(gateway.url + "/_test/pay", json={"order_no": req.order_no}, timeout=5)
    prov.refund(RefundRequest(refunded.order_no, refunded.order_no + "R", 200, 500))
    paid_at = prov.query(paid.order_no).paid_at
    assert paid_at is not None

    rows = prov.download_bill(paid_at.astimezone(CHINA).date())
    mine = {
        (r.order_no, r.kind): r for r in rows if r.order_no in {paid.order_no, refunded.order_no}
    }
    assert set(mine) == {
        (paid.order_no, "payment"),
        (refunded.order_no, "payment"),
        (refunded.order_no, "refund"),
    }
    assert mine[paid.order_no, "payment"].amount == 1234
    assert (
        mine[paid.order_no, "payment"].provider_trade_no
        == prov.query(paid.order_no).provider_trade_no
    )
    assert mine[paid.order_no, "payment"].at == paid_at
    assert mine[refunded.order_no, "payment"].amount == 500
    refund_row = mine[refunded.order_no, "refund"]
    assert (refund_row.amount, refund_row.refund_no) == (200, refunded.order_no + "R")

    assert prov.download_bill(dt.date(2001, 1, 1)) == []  # WeChat: "No Bill Exist"


def test_a_cut_or_garbled_bill_is_refused() -> None:
    header = sandbox.BILL_HEADER
    row = (
        "`2026-12-04 16:33:45,`wx1,`1900000109,`0,`,`4200000001,`RQ1,`o1,`NATIVE,`SUCCESS,"
        "`OTHERS,`CNY,`12.34,`0.00,`0,`0,`0.00,`0.00,`,`,`燃气费,`,`0.07,`0.60%,`12.34,`0.00,`"
    )
    summary = sandbox.BILL_SUMMARY_HEADER + "\r\n`1,`12.34,`0.00,`0.00,`0.07,`12.34,`0.00"
    rows = parse_bill("\r\n".join([header, row, summary]))
    assert [(r.order_no, r.amount, r.kind) for r in rows] == [("RQ1", 1234, "payment")]
    assert rows[0].at == dt.datetime(2026, 12, 4, 8, 33, 45, tzinfo=dt.UTC)
    with pytest.raises(PaymentError, match="summary says 2"):
        parse_bill("\r\n".join([header, row, summary.replace("`1,", "`2,")]))
    with pytest.raises(PaymentError, match="malformed bill"):
        parse_bill("\r\n".join([header, row]))  # no summary: cut short
    with pytest.raises(PaymentError, match="malformed bill"):
        parse_bill("\r\n".join([header, row.replace("`12.34,", "`12.345,"), summary]))


def test_money_conversions_are_exact() -> None:
    assert bill_yuan_to_fen("12.34") == 1234
    assert bill_yuan_to_fen("0.1") == 10
    assert bill_yuan_to_fen("100") == 10000
    assert bill_yuan_to_fen("0.07") == 7
    for bad in ("1.234", "1e3", "", "12,34", "NaN"):
        with pytest.raises(ValueError):
            bill_yuan_to_fen(bad)
    assert wire_to_fen("1234") == 1234
    for wrong in ("-1", "1.0", "", None, "１２", 12):
        with pytest.raises(ValueError):
            wire_to_fen(wrong)


# -- notify answers and delivery ------------------------------------------------------------
def test_notify_answer_is_what_wechat_expects(gateway: Sandbox) -> None:
    prov = gateway.provider()
    ok = prov.notify_answer(True)
    assert (ok.status, ok.body) == (200, OK_ANSWER)
    assert ok.content_type.startswith("text/xml")
    not_ok = prov.notify_answer(False)
    assert not_ok.status == 200
    assert parse_xml(not_ok.body)["return_code"] == "FAIL"
    assert sandbox.accepted(ok.status, ok.body) is True
    assert sandbox.accepted(not_ok.status, not_ok.body) is False
    assert sandbox.accepted(500, ok.body) is False
    assert sandbox.accepted(200, b"success") is False
    hours = [10800, 10800, 10800, 21600, 21600]
    assert [15, 15, 30, 180, 600, 1200, 1800, 1800, 1800, 3600, *hours] == sandbox.SCHEDULE


@dataclass
class Receiver:
    """A merchant's notify endpoint: verifies with the adapter, answers as told."""

    provider: WechatV2Provider
    answers: list[bool]
    seen: list[Any] = field(default_factory=list)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        headers = {
            k[5:].replace("_", "-").lower(): v for k, v in environ.items() if k.startswith("HTTP_")
        }
        headers["content-type"] = environ.get("CONTENT_TYPE", "")
        try:
            self.seen.append(self.provider.parse_notify(NotifyRequest(body, headers), now=NOW))
            ok = self.answers.pop(0)
        except NotifyRejected as exc:
            self.seen.append(exc)
            ok = False
        answer = self.provider.notify_answer(ok)
        start_response(f"{answer.status} OK", [("Content-Type", answer.content_type)])
        return [answer.body]


def http_post(item: QueuedNotify) -> tuple[bool, str]:
    """Send a queued notify as WeChat would (the lead's sender does the same in a thread)."""
    assert item.url.startswith("http://127.0.0.1:")
    assert item.headers == {"Content-Type": "text/xml"}
    request = urllib.request.Request(  # noqa: S310 - loopback only, checked above
        item.url, data=item.body, headers=item.headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except OSError as error:  # other tests' notifies go to a closed port
        return False, f"unreachable: {error}"
    return sandbox.accepted(status, body), f"{status} {body[:80]!r}"


def test_delivery_retries_on_fail_by_wechats_schedule(gateway: Sandbox) -> None:
    prov = gateway.provider()
    receiver = Receiver(prov, answers=[False, True])
    with serve(receiver) as merchant:
        req = payment(notify_url=merchant + "/payments/wechat-v2/notify")
        start = prov.create_payment(req)
        assert start.qr_code is not None
        press(start.qr_code, "pay")
        schedules = {sandbox.PROVIDER: sandbox.SCHEDULE}
        t0 = dt.datetime.now(dt.UTC)
        gateway.store.deliver_due(http_post, schedules, now=t0)
        (first,) = gateway.store.notifies(sandbox.PROVIDER, req.order_no)
        assert first["attempts"] == 1 and first["delivered_at"] is None
        assert "FAIL" in first["last_answer"]
        assert dt.datetime.fromisoformat(first["next_at"]) == t0 + dt.timedelta(seconds=15)

        gateway.store.deliver_due(http_post, schedules, now=t0 + dt.timedelta(seconds=14))
        assert len(receiver.seen) == 1  # not due yet
        gateway.store.deliver_due(http_post, schedules, now=t0 + dt.timedelta(seconds=15))
        (second,) = gateway.store.notifies(sandbox.PROVIDER, req.order_no)
        assert second["attempts"] == 2 and second["delivered_at"] is not None

    assert [n.order_no for n in receiver.seen] == [req.order_no, req.order_no]
    assert all(n.amount == 1234 and n.status is TradeStatus.paid for n in receiver.seen)


def test_test_hook_pays_with_another_amount(gateway: Sandbox) -> None:
    prov = gateway.provider()
    req = payment(amount=1000)
    prov.create_payment(req)
    hook = requests.post(
        gateway.url + "/_test/pay", json={"order_no": req.order_no, "amount": 999}, timeout=5
    )
    assert hook.status_code == 200 and hook.json()["amount"] == 999
    note = prov.parse_notify(
        notify_request(bytes(only_notify(gateway, req.order_no)["body"])), now=NOW
    )
    assert note.amount == 999  # genuinely signed: the conflict is the portal's to find
    assert prov.query(req.order_no).amount == 1000
    missing = requests.post(gateway.url + "/_test/pay", json={"order_no": "nope"}, timeout=5)
    assert missing.status_code == 404
    bad = requests.post(gateway.url + "/_test/pay", json={"order_no": 5}, timeout=5)
    assert bad.status_code == 400


# -- refusals --------------------------------------------------------------------------------
def reason(prov: WechatV2Provider, body: bytes) -> str:
    with pytest.raises(NotifyRejected) as err:
        prov.parse_notify(notify_request(body), now=NOW)
    return err.value.reason


def test_notify_refusals(gateway: Sandbox, signed_notify: bytes, tmp_path: Path) -> None:
    prov = gateway.provider()
    fields = parse_xml(signed_notify)
    assert prov.parse_notify(notify_request(signed_notify), now=NOW).order_no

    at = signed_notify.index(fields["transaction_id"].encode()) + 5
    flipped = signed_notify[:at] + bytes([signed_notify[at] ^ 0x01]) + signed_notify[at + 1 :]
    assert "bad HMAC-SHA256 sign" in reason(prov, flipped)

    more = {**fields, "total_fee": "1"}  # keeps the old sign
    assert "bad HMAC-SHA256 sign" in reason(prov, sandbox.to_xml(more))
    assert "bad HMAC-SHA256 sign" in reason(prov, resign(fields, "F" * 32))
    assert "bad MD5 sign" in reason(prov, resign({**fields, "sign_type": "MD5"}, "F" * 32, MD5))
    no_sign = {k: v for k, v in fields.items() if k != "sign"}
    assert "no sign" in reason(prov, sandbox.to_xml(no_sign))
    assert "unknown sign_type" in reason(prov, resign({**fields, "sign_type": "RSA"}, "x"))

    # genuinely signed with our key, but for another app / merchant
    wrong_app = resign({**fields, "appid": "wx0ther"}, gateway.api_key)
    assert "appid 'wx0ther' is not ours" in reason(prov, wrong_app)
    wrong_mch = resign({**fields, "mch_id": "1234567890"}, gateway.api_key)
    assert "mch_id '1234567890' is not ours" in reason(prov, wrong_mch)
    other = gateway.provider(appid="wxSomeOtherApp")
    assert "appid" in reason(other, signed_notify)

    assert "malformed" in reason(prov, b"")
    assert "malformed" in reason(prov, b"success")
    assert "malformed" in reason(prov, signed_notify[:-10])
    assert "malformed" in reason(prov, b"<xml><a><b>1</b></a></xml>")
    assert "malformed" in reason(prov, b"<xml><a>1</a><a>2</a></xml>")
    bomb = b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]><xml><return_code>&a;</return_code></xml>'
    assert "malformed" in reason(prov, bomb)
    assert "malformed" in reason(prov, resign({**fields, "total_fee": "12.34"}, gateway.api_key))
    assert "malformed" in reason(prov, resign({**fields, "time_end": "yesterday"}, gateway.api_key))
    assert "return_code" in reason(prov, b"<xml><return_code>FAIL</return_code></xml>")
    assert "too large" in reason(prov, b"<xml>" + b" " * 70000 + b"</xml>")

    failed = prov.parse_notify(
        notify_request(resign({**fields, "result_code": "FAIL"}, gateway.api_key)), now=NOW
    )
    assert failed.status is TradeStatus.failed and failed.paid_at is None


def test_every_single_byte_change_is_refused(gateway: Sandbox, signed_notify: bytes) -> None:
    prov = gateway.provider()

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.integers(0, len(signed_notify) - 1), st.integers(1, 255))
    def check(position: int, delta: int) -> None:
        body = bytearray(signed_notify)
        body[position] = (body[position] + delta) % 256
        with pytest.raises(NotifyRejected):
            prov.parse_notify(notify_request(bytes(body)), now=NOW)

    check()


_names = st.sampled_from(
    [
        "appid",
        "mch_id",
        "sign",
        "sign_type",
        "return_code",
        "result_code",
        "out_trade_no",
        "transaction_id",
        "total_fee",
        "time_end",
        "fee_type",
        "nonce_str",
    ]
)
_values = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["SUCCESS", "FAIL", "HMAC-SHA256", "MD5", "1234", "20261204120000", "CNY"]),
)


def test_parse_notify_only_trusts_genuinely_signed_input(gateway: Sandbox) -> None:
    prov = gateway.provider()
    key = gateway.api_key
    xml_safe = st.text(
        st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\ufffe\uffff"),
        max_size=20,
    )

    @st.composite
    def notifies(draw: st.DrawFn) -> tuple[bytes, bool]:
        kind = draw(st.sampled_from(["bytes", "fields", "signed"]))
        if kind == "bytes":
            return draw(st.binary(max_size=300)), False
        fields = draw(st.dictionaries(_names, st.one_of(_values, xml_safe), max_size=12))
        base = {
            "return_code": "SUCCESS",
            "result_code": "SUCCESS",
            "appid": sandbox.SANDBOX_APPID,
            "mch_id": sandbox.SANDBOX_MCH_ID,
        }
        fields = {**base, **fields} if draw(st.booleans()) else fields
        if kind == "signed":
            sign_type = draw(st.sampled_from([HMAC_SHA256, MD5]))
            fields["sign_type"] = sign_type
            return resign(fields, key, sign_type), True
        return sandbox.to_xml(fields), False

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(notifies(), st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3))
    def check(case: tuple[bytes, bool], headers: dict[str, str]) -> None:
        body, genuine = case
        try:
            note = prov.parse_notify(NotifyRequest(body=body, headers=headers), now=NOW)
        except NotifyRejected:
            return
        assert genuine, f"trusted an unsigned notify: {body!r}"
        fields = parse_xml(body)
        assert sandbox.wechat_sign(fields, key, fields["sign_type"]) == fields["sign"]
        assert note.app_id == sandbox.SANDBOX_APPID and note.merchant_id == sandbox.SANDBOX_MCH_ID
        assert note.amount == int(fields["total_fee"])

    check()


# -- keys ------------------------------------------------------------------------------------
def test_sandbox_keys_are_made_once_and_private(tmp_path: Path) -> None:
    first = sandbox.ensure_sandbox_keys(tmp_path / "wechat_v2")
    key = first.api_key_path.read_text().strip()
    assert len(key) == 32 and key.isalnum()
    assert stat.S_IMODE(first.api_key_path.stat().st_mode) == 0o600
    again = sandbox.ensure_sandbox_keys(tmp_path / "wechat_v2")
    assert again == first and again.api_key_path.read_text().strip() == key
    config = first.adapter_config("http://127.0.0.1:5000/sandbox/wechat_v2", "http://x/notify")
    assert isinstance(config, WechatV2Config) and config.client_cert_path is None
    assert WechatV2Provider(config).config is config

    (tmp_path / "short.txt").write_text("tooshort")
    with pytest.raises(ValueError, match="32 letters or digits"):
        WechatV2Provider(replace(config, api_key_path=tmp_path / "short.txt"))
    with pytest.raises(ValueError, match="sign_type"):
        WechatV2Provider(replace(config, sign_type="RSA"))
