"""The Alipay adapter against the sandbox gateway, over real HTTP on loopback."""

from __future__ import annotations

import base64
import datetime as dt
import json
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from alipay.aop.api.util.SignatureUtils import sign_with_rsa2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from payments.alipay import (
    BEIJING,
    AlipayConfig,
    AlipayProvider,
    fen_to_yuan,
    load_private_key,
    notify_sign_content,
    parse_bill,
    request_sign_content,
    sign_rsa2,
    verify_rsa2,
    yuan_to_fen,
)
from payments.base import (
    Notification,
    NotifyRejected,
    NotifyRequest,
    PaymentError,
    PaymentRequest,
    PayScene,
    RefundRequest,
    TradeStatus,
)
from payments.sandbox import alipay as sandbox
from payments.sandbox.store import QueuedNotify, SandboxStore
from tests.http_server import serve

APP_ID = "2021000000000001"
SELLER_ID = "2088000000000001"
NOTIFY_URL = "http://127.0.0.1:9/payments/alipay/notify"  # only queued, never posted
RETURN_URL = "https://ranqi.example/pay/return"
NOW = dt.datetime(2026, 12, 4, 8, 0, tzinfo=dt.UTC)


@dataclass
class Sandbox:
    base: str
    store: SandboxStore
    keys: sandbox.SandboxKeys
    provider: AlipayProvider

    @property
    def gateway(self) -> str:
        return self.base + "/sandbox/alipay/gateway.do"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> sandbox.SandboxKeys:
    return sandbox.ensure_sandbox_keys(tmp_path_factory.mktemp("alipay-keys"))


@pytest.fixture(scope="module")
def foreign(tmp_path_factory: pytest.TempPathFactory) -> sandbox.SandboxKeys:
    """Key pairs nobody trusts: an attacker's "Alipay" key and app key."""
    return sandbox.ensure_sandbox_keys(tmp_path_factory.mktemp("foreign-keys"))


@pytest.fixture(scope="module")
def gw(keys: sandbox.SandboxKeys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    store = SandboxStore(tmp_path_factory.mktemp("alipay-store") / "sandbox.sqlite3")
    app = Flask(__name__)
    config = keys.sandbox_config(app_id=APP_ID, seller_id=SELLER_ID)
    app.register_blueprint(sandbox.create_blueprint(store, config), url_prefix="/sandbox/alipay")
    with serve(app) as base:
        provider = AlipayProvider(
            keys.adapter_config(
                gateway_url=base + "/sandbox/alipay/gateway.do",
                app_id=APP_ID,
                seller_id=SELLER_ID,
                notify_url=NOTIFY_URL,
            )
        )
        yield Sandbox(base=base, store=store, keys=keys, provider=provider)


_counter = iter(range(1, 1_000_000))


def order_no() -> str:
    return f"R{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}{next(_counter):05d}"


def start(gw: Sandbox, scene: PayScene, amount: int = 1234, **extra: Any) -> tuple[str, str]:
    """Create a payment; (order_no, redirect URL or QR content)."""
    number = order_no()
    request = PaymentRequest(
        order_no=number,
        amount=amount,
        subject="燃气费 户号10000001 10.00 m³",
        scene=scene,
        notify_url=NOTIFY_URL,
        **extra,
    )
    begun = gw.provider.create_payment(request)
    link = begun.redirect_url if scene is PayScene.wap else begun.qr_code
    assert link is not None
    return number, link


def open_cashier(gw: Sandbox, link: str) -> str:
    """The payer's browser opening the redirect / scanned URL; the cashier page's URL."""
    answer = requests.get(link, allow_redirects=False, timeout=5)
    if answer.status_code == 302:
        cashier = urllib.parse.urljoin(link, answer.headers["Location"])
    else:
        assert answer.status_code == 200, answer.text
        cashier = link
    page = requests.get(cashier, timeout=5)
    assert page.status_code == 200
    assert "支付 Pay" in page.text and "取消 Cancel" in page.text
    assert "<script" not in page.text  # works without JavaScript
    assert 'name="viewport"' in page.text
    return cashier


def press(cashier: str, action: str) -> requests.Response:
    """Press 支付 Pay or 取消 Cancel on the cashier form, as a browser posts it."""
    return requests.post(cashier, data={"action": action}, allow_redirects=False, timeout=5)


def queued(gw: Sandbox, number: str) -> list[NotifyRequest]:
    return [
        NotifyRequest(
            body=bytes(row["body"]),
            headers={k.lower(): v for k, v in json.loads(row["headers"]).items()},
        )
        for row in gw.store.notifies("alipay", number)
    ]


def pay_by_cashier(gw: Sandbox, scene: PayScene, amount: int = 1234) -> tuple[str, NotifyRequest]:
    number, link = start(gw, scene, amount)
    press(open_cashier(gw, link), "pay")
    (notify,) = queued(gw, number)
    return number, notify


def form(body: bytes) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True))


def signed(params: dict[str, str], key_path: Path) -> bytes:
    """A notify body signed (RSA2) with the private key at ``key_path``."""
    params = dict(params)
    params.pop("sign", None)
    params["sign"] = sign_rsa2(load_private_key(key_path), notify_sign_content(params))
    return urllib.parse.urlencode(params).encode("ascii")


def genuine_params(**changes: str) -> dict[str, str]:
    params = {
        "notify_type": "trade_status_sync",
        "notify_id": "ac05099524730693a8b330c5ecf72da9",
        "notify_time": "2026-12-04 16:00:05",
        "charset": "utf-8",
        "version": "1.0",
        "app_id": APP_ID,
        "seller_id": SELLER_ID,
        "trade_no": "2026120422001000000000000001",
        "out_trade_no": "R1",
        "trade_status": "TRADE_SUCCESS",
        "total_amount": "12.34",
        "receipt_amount": "12.34",
        "buyer_pay_amount": "12.34",
        "gmt_payment": "2026-12-04 16:00:04",
        "sign_type": "RSA2",
    }
    params.update(changes)
    return params


# money at the edge ---------------------------------------------------------------------
def test_amounts_convert_exactly() -> None:
    assert fen_to_yuan(1234) == "12.34"
    assert fen_to_yuan(1) == "0.01"
    assert fen_to_yuan(100) == "1.00"
    assert yuan_to_fen("12.34") == 1234
    assert yuan_to_fen("0.01") == 1
    assert yuan_to_fen("99999999.99") == 9_999_999_999
    for bad in ("12.3", "12", "12.345", "-1.00", "0.00", "1e3", " 1.00", "01.00", "1,00", ""):
        with pytest.raises(ValueError):
            yuan_to_fen(bad)
    for bad_fen in (0, -1):
        with pytest.raises(ValueError):
            fen_to_yuan(bad_fen)


@given(st.integers(min_value=1, max_value=10**12))
def test_amounts_round_trip(fen: int) -> None:
    assert yuan_to_fen(fen_to_yuan(fen)) == fen


def test_cryptography_signature_equals_the_sdk_signature(keys: sandbox.SandboxKeys) -> None:
    content = 'app_id=1&biz_content={"a":"燃气"}&method=alipay.trade.query'
    pem = keys.app_private_key_path.read_text()
    assert sign_rsa2(load_private_key(keys.app_private_key_path), content) == sign_with_rsa2(
        pem, content, "utf-8"
    )


def test_sandbox_keys_are_made_once(tmp_path: Path) -> None:
    first = sandbox.ensure_sandbox_keys(tmp_path / "k")
    pem = first.alipay_public_key_path.read_bytes()
    second = sandbox.ensure_sandbox_keys(tmp_path / "k")
    assert second.alipay_public_key_path.read_bytes() == pem
    assert first.app_private_key_path.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----")
    assert first.alipay_private_key_path.stat().st_mode & 0o077 == 0


# create → cashier → notify → query ---------------------------------------------------------
def test_wap_payment_cashier_notify_query(gw: Sandbox) -> None:
    number, link = start(gw, PayScene.wap, 1234, return_url=RETURN_URL)
    assert link.startswith(gw.gateway + "?")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(link).query))
    assert query["method"] == "alipay.trade.wap.pay" and query["sign_type"] == "RSA2"
    assert json.loads(query["biz_content"])["total_amount"] == "12.34"
    assert gw.provider.query(number).status is TradeStatus.unknown  # not opened yet

    cashier = open_cashier(gw, link)
    assert "12.34" in requests.get(cashier, timeout=5).text
    assert gw.provider.query(number).status is TradeStatus.pending
    paid = press(cashier, "pay")
    # back to the merchant's return_url, with Alipay's signed sync parameters
    assert paid.status_code == 303
    location = paid.headers["Location"]
    assert location.startswith(RETURN_URL + "?")
    back = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))
    assert back["out_trade_no"] == number
    content = notify_sign_content(back).encode()
    assert verify_rsa2(gw.keys.alipay_public_key_path.read_text(), content, back["sign"])

    (notify,) = queued(gw, number)
    assert notify.headers["content-type"] == "application/x-www-form-urlencoded; charset=utf-8"
    note = gw.provider.parse_notify(notify, now=NOW)
    trade = gw.store.trade("alipay", number)
    assert trade is not None
    assert note == Notification(
        order_no=number,
        provider_trade_no=trade["trade_no"],
        status=TradeStatus.paid,
        amount=1234,
        app_id=APP_ID,
        merchant_id=SELLER_ID,
        paid_at=note.paid_at,
    )
    assert note.paid_at is not None
    assert abs(note.paid_at - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=10)

    status = gw.provider.query(number)
    assert status.status is TradeStatus.paid
    assert status.amount == 1234
    assert status.provider_trade_no == trade["trade_no"]
    assert status.paid_at == note.paid_at

    # paying twice is refused: the cashier shows the trade paid and queues nothing more
    again = press(cashier, "pay")
    assert again.status_code == 200 and "支付成功 Paid" in again.text
    assert len(queued(gw, number)) == 1


def test_qr_payment_by_precreate(gw: Sandbox) -> None:
    number, qr_code = start(gw, PayScene.qr, 5000)
    assert qr_code.startswith(gw.base + "/sandbox/alipay/cashier/")
    assert gw.provider.query(number).status is TradeStatus.pending
    shown = press(open_cashier(gw, qr_code), "pay")
    assert shown.status_code == 200 and "支付成功 Paid" in shown.text  # no return_url at a kiosk
    (notify,) = queued(gw, number)
    note = gw.provider.parse_notify(notify, now=NOW)
    assert (note.order_no, note.amount, note.status) == (number, 5000, TradeStatus.paid)
    assert note.provider_trade_no.startswith(dt.datetime.now(BEIJING).strftime("%Y%m%d"))
    assert gw.provider.query(number).status is TradeStatus.paid


def test_precreate_twice_is_the_same_trade_and_a_changed_amount_is_refused(gw: Sandbox) -> None:
    number, qr_code = start(gw, PayScene.qr, 700)
    again = gw.provider.create_payment(
        PaymentRequest(
            order_no=number,
            amount=700,
            subject="燃气费 户号10000001 10.00 m³",
            scene=PayScene.qr,
            notify_url=NOTIFY_URL,
        )
    )
    assert again.qr_code == qr_code
    with pytest.raises(PaymentError) as refused:
        gw.provider.create_payment(
            PaymentRequest(
                order_no=number,
                amount=701,
                subject="燃气费 户号10000001 10.00 m³",
                scene=PayScene.qr,
                notify_url=NOTIFY_URL,
            )
        )
    assert refused.value.code == "ACQ.CONTEXT_INCONSISTENT"


def test_scenes_alipay_does_not_serve_are_refused(gw: Sandbox) -> None:
    for scene in (PayScene.jsapi, PayScene.h5):
        with pytest.raises(PaymentError) as refused:
            start(gw, scene)
        assert refused.value.code == "unsupported_scene"
    with pytest.raises(PaymentError) as refused:
        start(gw, PayScene.wap, 0)
    assert refused.value.code == "invalid_amount"


def test_cancel_leaves_the_trade_unpaid(gw: Sandbox) -> None:
    number, link = start(gw, PayScene.wap, 990, return_url=RETURN_URL)
    cancelled = press(open_cashier(gw, link), "cancel")
    assert cancelled.status_code == 303
    assert cancelled.headers["Location"] == RETURN_URL
    assert gw.provider.query(number).status is TradeStatus.pending
    assert queued(gw, number) == []


def test_expired_trades_cannot_be_paid(gw: Sandbox) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    number, link = start(gw, PayScene.wap, 990, expires_at=past)
    opened = requests.get(link, allow_redirects=False, timeout=5)
    assert opened.status_code == 400 and "交易已关闭" in opened.text
    assert gw.provider.query(number).status is TradeStatus.unknown
    with pytest.raises(PaymentError) as refused:
        start(gw, PayScene.qr, 990, expires_at=past)
    assert refused.value.code == "ACQ.TRADE_HAS_CLOSE"


def test_a_tampered_wap_url_is_refused_by_the_gateway(gw: Sandbox) -> None:
    number, link = start(gw, PayScene.wap, 1234)
    tampered = link.replace("12.34", "0.01")
    assert tampered != link
    answer = requests.get(tampered, allow_redirects=False, timeout=5)
    assert answer.status_code == 400 and "验签出错" in answer.text
    assert gw.store.trade("alipay", number) is None


# delivery and retries --------------------------------------------------------------------
def test_notify_delivery_is_retried_on_alipays_schedule(gw: Sandbox) -> None:
    answers = {"ok": False}
    received: list[Notification] = []
    provider = gw.provider

    def receiver(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        """The merchant's notify endpoint: verify the raw body, answer what Alipay wants."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length)
        headers = {"content-type": environ.get("CONTENT_TYPE", "")}
        try:
            received.append(provider.parse_notify(NotifyRequest(body, headers), now=NOW))
            answer = provider.notify_answer(answers["ok"])
        except NotifyRejected:
            answer = provider.notify_answer(False)
        start_response(f"{answer.status} OK", [("Content-Type", answer.content_type)])
        return [answer.body]

    number, link = start(gw, PayScene.qr, 321)
    with serve(receiver) as receiver_url:

        def post(item: QueuedNotify) -> tuple[bool, str]:
            if item.order_no != number:  # other tests' notifies stay queued
                return False, "not this test's"
            http = urllib.request.Request(  # noqa: S310 - loopback
                receiver_url + "/payments/alipay/notify",
                data=item.body,
                headers=item.headers,
                method="POST",
            )
            with urllib.request.urlopen(http, timeout=5) as response:  # noqa: S310
                status, body = response.status, response.read()
            return sandbox.accepted(status, body), body.decode()

        press(open_cashier(gw, link), "pay")
        first = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        gw.store.deliver_due(post, {"alipay": sandbox.SCHEDULE}, now=first)
        (row,) = gw.store.notifies("alipay", number)
        assert (row["attempts"], row["delivered_at"], row["last_answer"]) == (1, None, "fail")
        assert dt.datetime.fromisoformat(row["next_at"]) == first + dt.timedelta(seconds=240)

        # not due before Alipay's first wait (4 minutes) is over
        gw.store.deliver_due(
            post, {"alipay": sandbox.SCHEDULE}, now=first + dt.timedelta(seconds=239)
        )
        assert gw.store.notifies("alipay", number)[0]["attempts"] == 1

        answers["ok"] = True
        gw.store.deliver_due(
            post, {"alipay": sandbox.SCHEDULE}, now=first + dt.timedelta(seconds=241)
        )
        (row,) = gw.store.notifies("alipay", number)
        assert row["attempts"] == 2 and row["delivered_at"] is not None
        assert row["last_answer"] == "success"
    assert [n.order_no for n in received] == [number, number]


def test_schedule_and_answers_are_alipays() -> None:
    assert sandbox.SCHEDULE == [240, 600, 600, 3600, 7200, 21600, 54000]
    assert len(sandbox.SCHEDULE) + 1 == 8  # eight notifies in all
    assert sum(sandbox.SCHEDULE) < 25 * 3600  # within 25 hours
    assert sandbox.accepted(200, b"success")
    assert sandbox.accepted(200, b"success\r\n")
    assert not sandbox.accepted(200, b"fail")
    assert not sandbox.accepted(200, b"SUCCESS")
    assert not sandbox.accepted(200, b"")


def test_notify_answer_is_exactly_what_alipay_expects(gw: Sandbox) -> None:
    ok = gw.provider.notify_answer(True)
    assert (ok.status, ok.body) == (200, b"success")
    assert ok.content_type.startswith("text/plain")
    not_ok = gw.provider.notify_answer(False)
    assert (not_ok.status, not_ok.body) == (200, b"fail")
    assert sandbox.accepted(ok.status, ok.body) and not sandbox.accepted(0, not_ok.body)


def test_test_hook_pays_with_another_amount(gw: Sandbox) -> None:
    number, _ = start(gw, PayScene.qr, 1000)
    hook = gw.base + "/sandbox/alipay/_test/pay"
    answer = requests.post(hook, json={"order_no": number, "amount": 999}, timeout=5)
    assert answer.status_code == 200, answer.text
    (notify,) = queued(gw, number)
    note = gw.provider.parse_notify(notify, now=NOW)
    assert (note.order_no, note.amount) == (number, 999)
    assert answer.json()["trade_no"] == note.provider_trade_no
    assert requests.post(hook, json={"order_no": number}, timeout=5).status_code == 409
    assert requests.post(hook, json={"order_no": "nope"}, timeout=5).status_code == 404
    assert requests.post(hook, json={"amount": 1}, timeout=5).status_code == 400


# refusals ----------------------------------------------------------------------------------
def test_a_flipped_byte_is_refused(gw: Sandbox) -> None:
    _, notify = pay_by_cashier(gw, PayScene.qr, 1234)
    body = notify.body.replace(b"total_amount=12.34", b"total_amount=12.35")
    assert body != notify.body
    with pytest.raises(NotifyRejected, match="signature"):
        gw.provider.parse_notify(NotifyRequest(body, notify.headers), now=NOW)
    for index in range(0, len(notify.body), 7):
        flipped = bytearray(notify.body)
        flipped[index] ^= 0x01
        with pytest.raises(NotifyRejected):
            gw.provider.parse_notify(NotifyRequest(bytes(flipped), notify.headers), now=NOW)


def test_a_signature_from_a_foreign_key_is_refused(
    gw: Sandbox, foreign: sandbox.SandboxKeys
) -> None:
    _, notify = pay_by_cashier(gw, PayScene.qr)
    forged = signed(form(notify.body), foreign.alipay_private_key_path)
    with pytest.raises(NotifyRejected, match="signature does not verify"):
        gw.provider.parse_notify(NotifyRequest(forged), now=NOW)
    # the same fields signed by the sandbox's key pass: only the key differs
    genuine = signed(form(notify.body), gw.keys.alipay_private_key_path)
    assert gw.provider.parse_notify(NotifyRequest(genuine), now=NOW).amount == 1234


def test_a_missing_signature_is_refused(gw: Sandbox) -> None:
    _, notify = pay_by_cashier(gw, PayScene.qr)
    params = form(notify.body)
    del params["sign"]
    with pytest.raises(NotifyRejected, match="missing sign"):
        gw.provider.parse_notify(NotifyRequest(urllib.parse.urlencode(params).encode()), now=NOW)
    params["sign"] = ""
    with pytest.raises(NotifyRejected, match="missing sign"):
        gw.provider.parse_notify(NotifyRequest(urllib.parse.urlencode(params).encode()), now=NOW)


def test_an_sha1_signature_is_not_rsa2(gw: Sandbox) -> None:
    params = genuine_params()
    content = notify_sign_content(params).encode()
    key = load_private_key(gw.keys.alipay_private_key_path)
    params["sign"] = base64.b64encode(
        key.sign(content, padding.PKCS1v15(), hashes.SHA1())  # noqa: S303
    ).decode()
    with pytest.raises(NotifyRejected, match="signature"):
        gw.provider.parse_notify(NotifyRequest(urllib.parse.urlencode(params).encode()), now=NOW)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"app_id": "2021000000009999"}, "app_id"),
        ({"seller_id": "2088000000009999"}, "seller_id"),
        ({"total_amount": "12.3"}, "total_amount"),
        ({"total_amount": "0.00"}, "total_amount"),
        ({"total_amount": "-12.34"}, "total_amount"),
        ({"trade_status": "WAIT_BUYER_PAY"}, "trade_status"),
        ({"trade_status": "PAID"}, "trade_status"),
        ({"notify_type": "fund_sync"}, "notify_type"),
        ({"out_trade_no": ""}, "missing out_trade_no"),
        ({"gmt_payment": "yesterday"}, "gmt_payment"),
        ({"charset": "koi8-r"}, "charset"),
        ({"sign_type": "RSA"}, "sign_type"),
    ],
)
def test_genuinely_signed_but_wrong_notifies_are_refused(
    gw: Sandbox, changes: dict[str, str], reason: str
) -> None:
    body = signed(genuine_params(**changes), gw.keys.alipay_private_key_path)
    with pytest.raises(NotifyRejected, match=reason):
        gw.provider.parse_notify(NotifyRequest(body), now=NOW)


def test_the_genuine_reference_notify_passes(gw: Sandbox) -> None:
    body = signed(genuine_params(), gw.keys.alipay_private_key_path)
    note = gw.provider.parse_notify(NotifyRequest(body), now=NOW)
    assert note.amount == 1234
    assert note.paid_at == dt.datetime(2026, 12, 4, 8, 0, 4, tzinfo=dt.UTC)


def test_a_gbk_notify_is_decoded_in_its_charset(gw: Sandbox) -> None:
    params = genuine_params(charset="gbk", subject="燃气费")
    content = notify_sign_content(params).encode("gbk")
    key = load_private_key(gw.keys.alipay_private_key_path)
    params["sign"] = base64.b64encode(
        key.sign(content, padding.PKCS1v15(), hashes.SHA256())
    ).decode()
    body = urllib.parse.urlencode(params, encoding="gbk").encode("ascii")
    assert gw.provider.parse_notify(NotifyRequest(body), now=NOW).amount == 1234
    as_utf8 = urllib.parse.urlencode({**params, "charset": "utf-8"}).encode("ascii")
    with pytest.raises(NotifyRejected):
        gw.provider.parse_notify(NotifyRequest(as_utf8), now=NOW)


@pytest.mark.parametrize(
    "body",
    [b"", b"\xff\xfe\x00", "燃气".encode(), b"a=1&&b", b"=x", b"no-equals-sign", b"a=%zz%"],
)
def test_malformed_bodies_are_refused(gw: Sandbox, body: bytes) -> None:
    with pytest.raises(NotifyRejected):
        gw.provider.parse_notify(NotifyRequest(body), now=NOW)


def test_duplicate_fields_are_refused(gw: Sandbox) -> None:
    body = signed(genuine_params(), gw.keys.alipay_private_key_path) + b"&total_amount=0.01"
    with pytest.raises(NotifyRejected, match="twice"):
        gw.provider.parse_notify(NotifyRequest(body), now=NOW)


FIELDS = st.sampled_from(
    [*genuine_params().keys(), "sign", "subject", "refund_fee", "gmt_refund", "x"]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=600),
    headers=st.dictionaries(st.text(max_size=20), st.text(max_size=40), max_size=4),
)
def test_arbitrary_bytes_are_only_ever_refused(
    gw: Sandbox, body: bytes, headers: dict[str, str]
) -> None:
    with pytest.raises(NotifyRejected):
        gw.provider.parse_notify(NotifyRequest(body, headers), now=NOW)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    changes=st.dictionaries(FIELDS, st.text(max_size=30), max_size=6),
    sign_it=st.booleans(),
)
def test_form_bodies_pass_only_when_genuinely_signed(
    gw: Sandbox, changes: dict[str, str], sign_it: bool
) -> None:
    params = genuine_params(**changes)
    try:
        if sign_it:
            body = signed(params, gw.keys.alipay_private_key_path)
        else:
            body = urllib.parse.urlencode(params).encode("ascii")
    except UnicodeEncodeError:
        return  # text the charset cannot carry cannot be signed in it either
    try:
        note = gw.provider.parse_notify(NotifyRequest(body), now=NOW)
    except NotifyRejected:
        return
    assert sign_it
    assert note.app_id == APP_ID
    assert note.amount == yuan_to_fen(params["total_amount"])
    assert note.order_no == params["out_trade_no"]


# query, close, refund, bill -------------------------------------------------------------------
def test_query_of_an_unknown_order(gw: Sandbox) -> None:
    assert gw.provider.query("never-created").status is TradeStatus.unknown


def test_close_an_unpaid_trade(gw: Sandbox) -> None:
    number, qr_code = start(gw, PayScene.qr, 800)
    cashier = open_cashier(gw, qr_code)
    gw.provider.close(number)
    assert gw.provider.query(number).status is TradeStatus.closed
    page = press(cashier, "pay")
    assert "交易已关闭 Trade closed" in page.text
    assert queued(gw, number) == []
    hook = requests.post(
        gw.base + "/sandbox/alipay/_test/pay", json={"order_no": number}, timeout=5
    )
    assert hook.status_code == 409
    gw.provider.close(number)  # closing twice is harmless
    gw.provider.close("never-created")  # nothing at Alipay: nothing to close


def test_a_paid_trade_cannot_be_closed(gw: Sandbox) -> None:
    number, _ = pay_by_cashier(gw, PayScene.qr)
    with pytest.raises(PaymentError) as refused:
        gw.provider.close(number)
    assert refused.value.code == "ACQ.TRADE_STATUS_ERROR"
    assert gw.provider.query(number).status is TradeStatus.paid


def test_refunds(gw: Sandbox) -> None:
    number, _ = pay_by_cashier(gw, PayScene.qr, 1234)

    def refund(refund_no: str, amount: int, total: int = 1234) -> Any:
        return gw.provider.refund(
            RefundRequest(
                order_no=number,
                refund_no=refund_no,
                refund_amount=amount,
                total_amount=total,
                reason="未圈存退款",
            )
        )

    first = refund(number + "-R1", 234)
    assert (first.status, first.amount, first.refund_no) == ("succeeded", 234, number + "-R1")
    repeat = refund(number + "-R1", 234)
    assert repeat.status == "processing"  # fund_change N: the money moved the first time
    assert gw.store.refunded_total("alipay", number) == 234

    with pytest.raises(PaymentError) as too_much:
        refund(number + "-R2", 1001, total=100_000)  # the gateway refuses, not only we
    assert too_much.value.code == "ACQ.REFUND_AMT_NOT_EQUAL_TOTAL"
    with pytest.raises(PaymentError) as too_much_here:
        refund(number + "-R2", 1235)
    assert too_much_here.value.code == "refund_too_large"
    assert gw.store.refunded_total("alipay", number) == 234

    assert gw.provider.query(number).status is TradeStatus.paid
    rest = refund(number + "-R3", 1000)
    assert rest.status == "succeeded"
    assert gw.provider.query(number).status is TradeStatus.refunded

    # Alipay notifies refunds too: TRADE_SUCCESS after a partial, TRADE_CLOSED after the full
    notes = [gw.provider.parse_notify(n, now=NOW) for n in queued(gw, number)]
    assert [n.status for n in notes] == [TradeStatus.paid, TradeStatus.paid, TradeStatus.refunded]
    assert {n.amount for n in notes} == {1234}


def test_refund_of_an_unpaid_trade_is_refused(gw: Sandbox) -> None:
    number, _ = start(gw, PayScene.qr, 500)
    with pytest.raises(PaymentError) as refused:
        gw.provider.refund(RefundRequest(number, number + "-R1", 100, 500))
    assert refused.value.code == "ACQ.TRADE_STATUS_ERROR"


def test_bill_download(gw: Sandbox) -> None:
    number, notify = pay_by_cashier(gw, PayScene.qr, 4321)
    trade_no = form(notify.body)["trade_no"]
    gw.provider.refund(RefundRequest(number, number + "-R1", 321, 4321))
    today = dt.datetime.now(BEIJING).date()
    rows = [row for row in gw.provider.download_bill(today) if row.order_no == number]
    assert len(rows) == 2
    payment, refund = sorted(rows, key=lambda row: row.kind)
    assert (payment.kind, payment.amount, payment.provider_trade_no) == ("payment", 4321, trade_no)
    assert payment.refund_no is None
    assert (refund.kind, refund.amount, refund.refund_no) == ("refund", 321, number + "-R1")
    assert refund.provider_trade_no == trade_no
    assert abs(payment.at - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=10)
    yesterday = today - dt.timedelta(days=1)
    assert [row for row in gw.provider.download_bill(yesterday) if row.order_no == number] == []


def test_bill_parser_reads_a_plain_gbk_csv() -> None:
    text = (
        "#支付宝业务明细查询\r\n"
        "支付宝交易号,商户订单号,业务类型,商品名称,创建时间,完成时间,订单金额（元）,"
        "商家实收（元）,退款批次号/请求号\r\n"
        "2026120422001000000000000001\t,R1\t,交易,燃气费,2026-12-04 10:00:00,"
        "2026-12-04 10:00:05,12.34,12.34,\r\n"
        "2026120422001000000000000001\t,R1\t,分账,燃气费,2026-12-04 10:00:00,"
        "2026-12-04 10:00:05,12.34,12.34,\r\n"
        "#交易合计：1笔，退款合计：0笔\r\n"
    )
    (row,) = parse_bill(text.encode("gbk"))
    assert (row.order_no, row.amount, row.kind) == ("R1", 1234, "payment")
    assert row.at == dt.datetime(2026, 12, 4, 2, 0, 5, tzinfo=dt.UTC)
    with pytest.raises(PaymentError):
        parse_bill(text.replace("12.34,12.34", "12.3,12.3").encode("gbk"))


# signatures on the server-to-server calls ------------------------------------------------------
def test_answers_signed_by_a_foreign_key_are_refused(
    gw: Sandbox, foreign: sandbox.SandboxKeys
) -> None:
    number, _ = start(gw, PayScene.qr, 600)
    fooled = AlipayProvider(
        AlipayConfig(
            app_id=APP_ID,
            app_private_key_path=gw.keys.app_private_key_path,
            alipay_public_key_path=foreign.alipay_public_key_path,
            gateway_url=gw.gateway,
        )
    )
    with pytest.raises(PaymentError) as refused:
        fooled.query(number)
    assert refused.value.code == "bad_signature"


def test_requests_signed_by_a_foreign_app_key_are_refused(
    gw: Sandbox, foreign: sandbox.SandboxKeys
) -> None:
    intruder = AlipayProvider(
        AlipayConfig(
            app_id=APP_ID,
            app_private_key_path=foreign.app_private_key_path,
            alipay_public_key_path=gw.keys.alipay_public_key_path,
            gateway_url=gw.gateway,
        )
    )
    with pytest.raises(PaymentError) as refused:
        intruder.query("anything")
    assert refused.value.code == "isv.invalid-signature"
    wrong_app = AlipayProvider(
        AlipayConfig(
            app_id="2021000000009999",
            app_private_key_path=gw.keys.app_private_key_path,
            alipay_public_key_path=gw.keys.alipay_public_key_path,
            gateway_url=gw.gateway,
        )
    )
    with pytest.raises(PaymentError) as refused:
        wrong_app.query("anything")
    assert refused.value.code == "isv.invalid-app-id"


def test_a_replayed_signed_answer_with_a_second_object_is_refused(gw: Sandbox) -> None:
    """A man in the middle keeps Alipay's signed part but adds a duplicate key after it."""
    number, _ = start(gw, PayScene.qr, 600)
    tamper = {"on": False}

    def middle(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        forward = urllib.request.Request(gw.gateway, data=body, method="POST")  # noqa: S310
        forward.add_header("Content-Type", environ["CONTENT_TYPE"])
        with urllib.request.urlopen(forward, timeout=5) as answer:  # noqa: S310
            text = answer.read().decode()
        if tamper["on"]:
            original = json.loads(text)["alipay_trade_query_response"]
            forged = {
                **original,
                "trade_status": "TRADE_SUCCESS",
                "send_pay_date": "2026-12-04 10:00:00",
            }
            text = text[:-1] + ',"alipay_trade_query_response":' + json.dumps(forged) + "}"
        start_response("200 OK", [("Content-Type", "text/html;charset=utf-8")])
        return [text.encode()]

    with serve(middle) as middle_url:
        relayed = AlipayProvider(
            gw.keys.adapter_config(gateway_url=middle_url + "/gateway.do", app_id=APP_ID)
        )
        assert relayed.query(number).status is TradeStatus.pending  # an honest relay works
        tamper["on"] = True
        with pytest.raises(PaymentError) as refused:
            relayed.query(number)
        assert refused.value.code == "bad_signature"


def test_the_gateway_speaks_alipays_wire_format(gw: Sandbox) -> None:
    """A hand-made signed form POST, as any Alipay client sends it, and its signed answer."""
    params = {
        "app_id": APP_ID,
        "method": "alipay.trade.query",
        "charset": "utf-8",
        "format": "json",
        "sign_type": "RSA2",
        "timestamp": "2026-12-04 16:00:00",
        "version": "1.0",
        "biz_content": json.dumps({"out_trade_no": "never-created"}),
    }
    key = load_private_key(gw.keys.app_private_key_path)
    params["sign"] = sign_rsa2(key, request_sign_content(params))
    answer = requests.post(gw.gateway, data=params, timeout=5)
    text = answer.text
    assert text.startswith('{"alipay_trade_query_response":{') and ',"sign":"' in text
    inner = text[len('{"alipay_trade_query_response":') : text.rindex(',"sign":"')]
    sign = text[text.rindex(',"sign":"') + len(',"sign":"') : -2]
    assert verify_rsa2(gw.keys.alipay_public_key_path.read_text(), inner.encode(), sign)
    assert json.loads(inner)["sub_code"] == "ACQ.TRADE_NOT_EXIST"

    params["timestamp"] = "yesterday"
    params["sign"] = sign_rsa2(key, request_sign_content(params))
    refused = requests.post(gw.gateway, data=params, timeout=5).text
    assert '"sub_code":"isv.invalid-timestamp"' in refused


def test_an_unreachable_gateway_is_a_payment_error(keys: sandbox.SandboxKeys) -> None:
    offline = AlipayProvider(
        keys.adapter_config(gateway_url="http://127.0.0.1:9/gateway.do", app_id=APP_ID)
    )
    with pytest.raises(PaymentError) as refused:
        offline.query("R1")
    assert refused.value.code == "unreachable"


def test_only_rsa2_is_configurable(keys: sandbox.SandboxKeys) -> None:
    with pytest.raises(ValueError, match="RSA2"):
        AlipayConfig(
            app_id=APP_ID,
            app_private_key_path=keys.app_private_key_path,
            alipay_public_key_path=keys.alipay_public_key_path,
            sign_type="RSA",
        )
