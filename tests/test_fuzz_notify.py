"""Hypothesis over the three notify endpoints with the real providers in sandbox mode.

The app runs with ``RANQI_PAYMENTS=sandbox`` (keys generated under tmp), served on
loopback so that the adapters reach the sandbox gateways over HTTP. Per provider two
orders are paid at the sandbox: one's genuine signed notify is delivered first (that
order is paid: its notify is the one we mutate), the other's waits in the sandbox's
queue until the end. Then junk goes to /payments/alipay/notify, /payments/wechat/notify
and /payments/wechat-v2/notify: raw bytes, form-encoded, JSON and XML junk shaped like
the real thing, and genuine notifies tampered with (a letter or digit swapped for
another) or mangled (bytes flipped, replaced, cut or added), with arbitrary headers or
the genuine ones. For every request:

- the answer is exactly the provider's "failed, retry" answer (Alipay ``fail``, WeChat v2
  ``FAIL`` XML, WeChat v3 HTTP 500 ``{"code": "FAIL"}``, which is how v3 asks for a retry)
  and never an unhandled error;
- nothing changes: no order's state, no credit, no ledger entry or line, no conflict;
- the request is stored as one PaymentEvent, verified False, outcome "rejected", with the
  raw body as received and the reason.

The one exception, stated precisely: a changed notify that still says exactly what the
genuine one says as its provider signs it (Alipay: the same form fields after decoding,
e.g. a percent-escape's hex digit in the other case; WeChat v2: the same XML fields;
WeChat v3: the same bytes, e.g. only an unsigned header changed) is the genuine notify of
an order that is paid already: it is verified, stored as outcome "duplicate", answered
with success, and changes nothing either. Finally the waiting genuine notifies are
delivered: each of the three orders is paid once, with its credit; the ledger balances.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import ledger
from models.base import utcnow
from models.ledger import LedgerEntry, LedgerLine
from models.ordering import create_order
from models.orders import Credit, Order, PaymentConflict, PaymentEvent
from models.quotes import find_meter, quote
from models.tariffs import Tariff
from payments.base import PaymentRequest, PayScene, Provider
from payments.wechat_v2 import parse_xml
from portal import db as portal_db
from portal import providers
from tests.browser.conftest import sandbox_site  # noqa: F401  (the served sandbox app)

#: URL segment → provider name, as the callbacks blueprint maps them
ENDPOINTS = {"alipay": "alipay", "wechat": "wechat", "wechat-v2": "wechat_v2"}
#: examples per endpoint
MAX_EXAMPLES = 200
SEED = 1701

#: headers no client sets freely: the transport's own
TRANSPORT_HEADERS = {"content-length", "transfer-encoding", "host", "connection"}
HEADER_NAMES = st.sampled_from(
    [
        "Content-Type",
        "Wechatpay-Signature",
        "Wechatpay-Timestamp",
        "Wechatpay-Nonce",
        "Wechatpay-Serial",
        "Wechatpay-Signature-Type",
        "User-Agent",
        "Accept",
    ]
) | st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,24}\Z")
#: header values as HTTP carries them: Latin-1 text without line breaks
HEADER_VALUES = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=80,
)
#: what replaces a letter or digit of a genuine notify: a form, JSON or XML stays well-formed
TAMPER_CHARACTERS = b"0123456789ABCDEFabcdefxyzXYZ"
CONTENT_TYPES = st.sampled_from(
    [
        "application/x-www-form-urlencoded; charset=utf-8",
        "application/json",
        "text/xml",
        "application/octet-stream",
        "multipart/form-data; boundary=x",
        "text/plain; charset=gbk",
    ]
)


@dataclass(frozen=True)
class Genuine:
    """A genuine notify the sandbox signed: body and headers as it would post them."""

    provider: str
    order_no: str
    body: bytes
    headers: dict[str, str]


@dataclass
class Site:
    """The served sandbox app, a test client of it, and the genuine notifies."""

    app: Flask
    client: FlaskClient
    #: per provider: the paid order's genuine notify (mutated) and the waiting one's
    paid: dict[str, Genuine]
    waiting: dict[str, Genuine]


def _order(app: Flask, account_no: str, channel: str) -> Order:
    with Session(portal_db.database(app).engine, expire_on_commit=False) as s:
        meter = find_meter(s, account_no, None)
        quoted = quote(s, meter=meter, volume=2000, at=utcnow())
        tariff_id = s.scalar(select(Tariff.id).where(Tariff.code == quoted.tariff_code))
        assert tariff_id is not None
        order = create_order(
            s,
            meter=meter,
            tariff_id=tariff_id,
            volume=quoted.volume,
            amount=quoted.amount,
            quote=quoted.as_dict(),
            channel=channel,
            now=utcnow(),
            ttl=dt.timedelta(minutes=15),
        )
        s.commit()
        return order


def _pay_at_the_sandbox(app: Flask, client: FlaskClient, account_no: str, name: str) -> Genuine:
    """Order, start paying (the adapter talks to the sandbox over HTTP), pay; the notify
    the sandbox queued is returned, not delivered."""
    order = _order(app, account_no, name)
    provider: Provider = app.extensions["ranqi_providers"][name]
    start = provider.create_payment(
        PaymentRequest(
            order_no=order.order_no,
            amount=order.amount,
            subject="燃气费",
            scene=PayScene.qr,
            notify_url=providers.notify_url(app, name),
        )
    )
    assert start.qr_code
    prefix = providers.SANDBOX_PREFIX[name]
    paid = client.post(f"{prefix}/_test/pay", json={"order_no": order.order_no})
    assert paid.status_code == 200, paid.get_data(as_text=True)
    (queued,) = app.extensions["ranqi_sandbox_store"].notifies(name, order.order_no)
    return Genuine(name, order.order_no, bytes(queued["body"]), json.loads(queued["headers"]))


@pytest.fixture
def site(sandbox_site: tuple[Flask, str]) -> Site:  # noqa: F811
    app, _url = sandbox_site
    client = app.test_client()
    sender = providers.sandbox_sender(app)
    assert sender is not None
    accounts = iter(["10000003", "10000005", "10000006", "10000007", "10000008", "10000009"])
    paid = {
        name: _pay_at_the_sandbox(app, client, next(accounts), name) for name in ENDPOINTS.values()
    }
    assert sender.deliver_once() == 3
    waiting = {
        name: _pay_at_the_sandbox(app, client, next(accounts), name) for name in ENDPOINTS.values()
    }
    with Session(portal_db.database(app).engine) as s:
        states = {o.order_no: o.state for o in s.scalars(select(Order))}
    assert all(states[g.order_no] == "paid" for g in paid.values()), states
    assert all(states[g.order_no] != "paid" for g in waiting.values()), states
    return Site(app, client, paid, waiting)


# --- the junk ---------------------------------------------------------------------------

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def _field_values(order_nos: list[str]) -> st.SearchStrategy[str]:
    """Values a forger would try: our order numbers, plausible statuses, anything."""
    return (
        st.sampled_from(order_nos)
        | st.sampled_from(["TRADE_SUCCESS", "SUCCESS", "RSA2", "trade_status_sync", "0.01", "1"])
        | st.text(max_size=40)
    )


@st.composite
def form_junk(draw: Callable[..., Any], order_nos: list[str]) -> bytes:
    names = st.sampled_from(
        [
            "out_trade_no",
            "trade_no",
            "trade_status",
            "total_amount",
            "sign",
            "sign_type",
            "app_id",
            "seller_id",
            "notify_type",
            "charset",
            "gmt_payment",
        ]
    ) | st.text(max_size=12)
    pairs = draw(st.lists(st.tuples(names, _field_values(order_nos)), max_size=12))
    charset = draw(st.sampled_from(["utf-8", "gbk", "latin-1"]))
    return urllib.parse.urlencode(pairs, encoding=charset, errors="replace").encode("ascii")


@st.composite
def json_junk(draw: Callable[..., Any], order_nos: list[str]) -> bytes:
    if draw(st.booleans()):
        value: Any = draw(JSON_VALUES)
    else:  # shaped like a v3 notify: an encrypted resource that is not ours
        value = {
            "id": draw(st.text(max_size=36)),
            "event_type": draw(st.sampled_from(["TRANSACTION.SUCCESS", "REFUND.SUCCESS", "X"])),
            "resource_type": "encrypt-resource",
            "resource": {
                "algorithm": draw(st.sampled_from(["AEAD_AES_256_GCM", "none"])),
                "ciphertext": draw(st.binary(max_size=120)).hex()
                if draw(st.booleans())
                else draw(st.sampled_from(order_nos)),
                "nonce": draw(st.text(max_size=20)),
                "associated_data": draw(st.sampled_from(["transaction", ""])),
            },
        }
    return json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def xml_junk(draw: Callable[..., Any], order_nos: list[str]) -> bytes:
    names = st.sampled_from(
        [
            "return_code",
            "result_code",
            "out_trade_no",
            "transaction_id",
            "total_fee",
            "sign",
            "sign_type",
            "appid",
            "mch_id",
            "time_end",
            "fee_type",
        ]
    ) | st.from_regex(r"\A[a-z_]{1,10}\Z")
    fields = draw(st.lists(st.tuples(names, _field_values(order_nos)), max_size=12))
    inner = "".join(
        f"<{k}><![CDATA[{v}]]></{k}>" if draw(st.booleans()) else f"<{k}>{v}</{k}>"
        for k, v in fields
    )
    root = draw(st.sampled_from(["xml", "xml", "root", "xml attr='1'"]))
    prolog = draw(
        st.sampled_from(
            [
                "",
                '<?xml version="1.0" encoding="UTF-8"?>',
                '<!DOCTYPE xml [<!ENTITY e SYSTEM "file:///etc/passwd">]>',
                '<!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>',
            ]
        )
    )
    entity = draw(st.sampled_from(["", "<x>&e;</x>", "<x>&b;</x>"]))
    return f"{prolog}<{root}>{inner}{entity}</{root.split()[0]}>".encode(errors="surrogatepass")


@st.composite
def mutated(
    draw: Callable[..., Any], genuine: list[Genuine]
) -> tuple[Genuine, bytes, dict[str, str]]:
    """A genuine notify of a paid order, changed: a character swapped for another, bytes
    flipped, replaced, cut or added, one header changed or not; with its source."""
    source: Genuine = draw(st.sampled_from(genuine))
    body = bytearray(source.body)
    if draw(st.booleans()):  # tamper: one letter or digit for another, the syntax survives
        # sampled_from is uniform; integers() leans to the ends (the first tag, the sign)
        at = draw(st.sampled_from([i for i, b in enumerate(body) if chr(b).isalnum()]))
        body[at] = draw(st.sampled_from([c for c in TAMPER_CHARACTERS if c != body[at]]))
    else:  # mangle: bytes flipped, replaced, cut or added
        for _ in range(draw(st.integers(1, 3))):
            how = draw(st.sampled_from(["flip", "replace", "cut", "insert", "keep"]))
            at = draw(st.sampled_from(range(max(len(body), 1))))
            if how == "flip" and body:
                body[at] ^= 1 << draw(st.integers(0, 7))
            elif how == "replace" and body:
                end = at + draw(st.integers(1, 16))
                body[at:end] = draw(st.binary(min_size=1, max_size=16))
            elif how == "cut":
                body = body[:at]
            elif how == "insert":
                body[at:at] = draw(st.binary(min_size=1, max_size=8))
    headers = dict(source.headers)
    if draw(st.booleans()):
        name = draw(st.sampled_from(sorted(headers)))
        headers[name] = draw(HEADER_VALUES)
    return source, bytes(body), headers


@st.composite
def requests(
    draw: Callable[..., Any], site: Site, endpoint: str
) -> tuple[bytes, dict[str, str], str]:
    """(body, headers, kind) of one junk request to ``endpoint``."""
    order_nos = [g.order_no for g in [*site.paid.values(), *site.waiting.values()]]
    kind = draw(st.sampled_from(["mutated", "bytes", "mutated", "form", "json", "mutated", "xml"]))
    headers: dict[str, str] = {}
    if kind == "mutated":
        # mostly the notify meant for this endpoint, sometimes another provider's
        own = [site.paid[ENDPOINTS[endpoint]]]
        sources = own if draw(st.integers(0, 3)) else list(site.paid.values())
        _source, body, headers = draw(mutated(sources))
    elif kind == "bytes":
        body = draw(st.binary(max_size=2048))
    elif kind == "form":
        body = draw(form_junk(order_nos))
    elif kind == "json":
        body = draw(json_junk(order_nos))
    else:
        body = draw(xml_junk(order_nos))
    if kind != "mutated" and endpoint == "wechat" and draw(st.booleans()):
        # v3 looks at the headers first: junk bodies also come with the genuine ones
        headers = dict(site.paid["wechat"].headers)
    extra = draw(st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=4))
    if draw(st.booleans()):
        extra["Content-Type"] = draw(CONTENT_TYPES)
    if draw(st.booleans()):
        headers.update(extra)
    headers = {k: v for k, v in headers.items() if k.lower() not in TRANSPORT_HEADERS}
    return body, headers, kind


# --- the checks -------------------------------------------------------------------------


def _state(s: Session) -> dict[str, Any]:
    """What a notify could change: orders' states, credits, the ledger, conflicts."""

    def count(model: Any) -> int:
        return s.scalar(select(func.count()).select_from(model)) or 0

    return {
        "orders": {o.order_no: o.state for o in s.scalars(select(Order))},
        "credits": count(Credit),
        "ledger entries": count(LedgerEntry),
        "ledger lines": count(LedgerLine),
        "conflicts": count(PaymentConflict),
    }


#: edge cases sent before the generated ones: empty, too large, deeply nested, a NUL
EXTREMES: list[tuple[str, bytes]] = [
    ("alipay", b""),
    ("wechat", b""),
    ("wechat-v2", b""),
    ("alipay", b"a=" + b"%00" * 70_000),
    ("wechat", b"[" * 20 + b"]" * 20),
    ("wechat-v2", b"<xml>" * 20_000),
    ("wechat-v2", b"<xml><return_code>SUCCESS</return_code><sign>\x00</sign></xml>"),
    ("alipay", b"sign=%00&sign_type=RSA2&out_trade_no=%00"),
]


def same_notify(provider: str, body: bytes, genuine: bytes) -> bool:
    """Whether ``body`` says what ``genuine`` says, as its provider signs it: Alipay's form
    fields, WeChat v2's XML fields, WeChat v3's exact bytes."""
    try:
        if provider == "alipay":
            fields = urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True)
            return sorted(fields) == sorted(
                urllib.parse.parse_qsl(genuine.decode("ascii"), keep_blank_values=True)
            )
        if provider == "wechat_v2":
            return parse_xml(body) == parse_xml(genuine)
    except ValueError:
        return False
    return body == genuine


class JunkPoster:
    """Posts one junk notify and checks the answer, the stored event and the state."""

    def __init__(self, site: Site) -> None:
        self.client = site.client
        self.engine = portal_db.database(site.app).engine
        self.registry: dict[str, Provider] = site.app.extensions["ranqi_providers"]
        self.genuine = site.paid
        self.kinds: dict[str, int] = {}
        self.duplicates: list[str] = []

    def post(self, endpoint: str, body: bytes, headers: dict[str, str], kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        provider = self.registry[ENDPOINTS[endpoint]]
        with Session(self.engine) as s:
            before = _state(s)
            last_event = s.scalar(select(func.max(PaymentEvent.id))) or 0
        # input_stream, not data=: the test client would build a form for an empty body
        response = self.client.post(
            f"/payments/{endpoint}/notify",
            input_stream=io.BytesIO(body),
            content_length=len(body),
            headers=headers,
        )
        with Session(self.engine) as s:
            assert _state(s) == before, f"{kind} junk at {endpoint} changed something"
            events = s.scalars(select(PaymentEvent).where(PaymentEvent.id > last_event)).all()
        assert len(events) == 1, f"{kind} junk at {endpoint}: {len(events)} events stored"
        (event,) = events
        assert (event.provider, event.kind, event.raw_body) == (provider.name, "notify", body)
        if event.verified:  # the signed content survived the mutation: the same notify
            genuine = self.genuine[provider.name]
            assert kind == "mutated" and event.outcome == "duplicate", (kind, event.outcome)
            assert event.order_no == genuine.order_no
            assert same_notify(provider.name, body, genuine.body), f"verified: {body!r}"
            answer = provider.notify_answer(True)
            self.duplicates.append(event.order_no or "")
        else:
            assert event.outcome == "rejected" and event.detail, (event.outcome, event.detail)
            answer = provider.notify_answer(False)
        assert (response.status_code, response.get_data()) == (answer.status, answer.body)


def _fuzz_endpoint(site: Site, poster: JunkPoster, endpoint: str) -> Callable[[], None]:
    """The hypothesis test of one endpoint."""

    @seed(SEED)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(sent=requests(site, endpoint))
    def post_junk(sent: tuple[bytes, dict[str, str], str]) -> None:
        poster.post(endpoint, *sent)

    return post_junk


def test_junk_notifies_are_refused_stored_and_change_nothing(site: Site) -> None:
    """Hundreds of junk and tampered notifies at the three endpoints: each answered with
    the provider's failure answer, stored as a rejected event, and nothing paid; after
    them the genuine notifies still pay their orders, once each."""
    app = site.app
    engine = portal_db.database(app).engine
    poster = JunkPoster(site)
    for endpoint, body in EXTREMES:
        poster.post(endpoint, body, {}, "extreme")
        poster.post(endpoint, body, site.paid[ENDPOINTS[endpoint]].headers, "extreme")

    for endpoint in ENDPOINTS:
        _fuzz_endpoint(site, poster, endpoint)()
    assert poster.kinds.keys() == {"extreme", "bytes", "form", "json", "xml", "mutated"}
    duplicates = poster.duplicates

    sender = providers.sandbox_sender(app)
    assert sender is not None and sender.deliver_once() == 3
    with Session(engine) as s:
        for genuine in site.waiting.values():
            order = s.scalar(select(Order).where(Order.order_no == genuine.order_no))
            assert order is not None and order.state == "paid", genuine
            assert (
                s.scalar(
                    select(func.count()).select_from(Credit).where(Credit.order_id == order.id)
                )
                == 1
            )
        outcomes = s.scalars(
            select(PaymentEvent.outcome).where(PaymentEvent.verified.is_(True))
        ).all()
        assert sorted(outcomes) == ["duplicate"] * len(duplicates) + ["paid"] * 6
        assert s.scalar(select(func.count()).select_from(PaymentConflict)) == 0
        assert ledger.check(s) == []


def test_deeply_nested_json_at_wechat_v3_is_refused_and_stored(site: Site) -> None:
    """JSON nested deeper than Python's json module reads, sent with headers that pass v3's
    header checks (the serial is public, the time is now), is junk like any other: the
    FAIL answer, one rejected event, nothing changed. Found by this file's fuzzing."""
    poster = JunkPoster(site)
    body = b"[" * 100_000 + b"]" * 100_000
    try:
        poster.post("wechat", body, site.paid["wechat"].headers, "extreme")
    except RecursionError:
        pytest.fail(
            "payments/wechat_v3.py parse_notify: json.loads raised RecursionError, which "
            "escapes (only ValueError is caught): the notify is answered by an unhandled "
            "error and no PaymentEvent is stored",
            pytrace=False,
        )
