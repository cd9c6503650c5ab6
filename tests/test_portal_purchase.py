"""The residents' purchase flow: second factor and rate limits, buy page with its live quote,
order and payment start, the result page and the e-receipt, on both databases."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import demo
from models.accounts import Meter, MeterReport
from models.orders import Credit, Order
from payments.base import PaymentError, PaymentRequest, PaymentStart, PayScene
from portal import limits
from portal.purchase import parse_quantity, payment_options
from tests.fake_provider import FakeProvider, sign

ROOT = Path(__file__).resolve().parent.parent
HX = {"HX-Request": "true"}
ALIPAY_UA = "Mozilla/5.0 (Linux; Android 14) AlipayClient/10.5.96"
WECHAT_UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) MicroMessenger/8.0.50"
PHONE_UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0) Safari/604.1"
#: demo account 10000001 (张三, phone ending 1001): 300 m³ bought this cycle, one meter
ACCOUNT, METER, LAST_FOUR = "10000001", "M100000011", "1001"
BUY = f"/accounts/{ACCOUNT}/meters/{METER}/buy"
ORDERS = f"/accounts/{ACCOUNT}/meters/{METER}/orders"


@pytest.fixture
def demo_db(db: Session) -> Session:
    demo.load(db)
    return db


@pytest.fixture
def fakes(app: Flask) -> dict[str, FakeProvider]:
    registry = {"alipay": FakeProvider("alipay"), "wechat": FakeProvider("wechat")}
    app.extensions["ranqi_providers"] = registry
    return registry  # type: ignore[return-value]


def csrf_token(client: FlaskClient) -> str:
    """The session's CSRF token, as a page carries it in hx-headers on <body>."""
    html = client.get("/").get_data(as_text=True)
    match = re.search(r'hx-headers=\'\{"X-CSRF-Token": "([^"]+)"\}\'', html)
    assert match, "the page carries no CSRF token"
    return match.group(1)


def verify(client: FlaskClient, last_four: str, *, account: str = ACCOUNT, **kw: Any) -> Any:
    token = csrf_token(client)
    return client.post(
        f"/accounts/{account}/verify",
        data={"last_four": last_four, "csrf_token": token},
        **kw,
    )


def count(db: Session, model: type) -> int:
    return db.scalar(select(func.count()).select_from(model)) or 0


def confirm(client: FlaskClient, **fields: str) -> Any:
    """Show the quote (as the page would), then post the form with what it showed."""
    query = {"by": fields.get("by", "volume"), "quantity": fields.get("quantity", "100")}
    page = client.get(BUY, query_string=query, headers={"User-Agent": PHONE_UA})
    html = page.get_data(as_text=True)
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', html))
    data = {**hidden, **query, "channel": "alipay", **fields}
    return client.post(ORDERS, data=data, headers={"User-Agent": fields.get("ua", PHONE_UA)})


def notify(client: FlaskClient, order: Order, path: str = "alipay") -> None:
    body = sign(
        {"order_no": order.order_no, "trade_no": "T-1", "status": "paid", "amount": order.amount}
    )
    response = client.post(f"/payments/{path}/notify", data=body)
    assert (response.status_code, response.data) == (200, b"success")


# --- second factor ---------------------------------------------------------------------


def test_lookup_offers_the_second_factor_and_buying(client: FlaskClient, demo_db: Session) -> None:
    html = client.get(f"/accounts/lookup?account_no={ACCOUNT}").get_data(as_text=True)
    assert f'href="/accounts/{ACCOUNT}/verify"' in html
    assert f'href="{BUY}"' in html  # anyone may pay: no second factor needed
    assert "购气记录" in html and "上次购气" not in html
    form = client.get(f"/accounts/{ACCOUNT}/verify", headers=HX).get_data(as_text=True)
    assert 'name="last_four"' in form and 'name="csrf_token"' in form
    assert f'hx-post="/accounts/{ACCOUNT}/verify"' in form
    assert "<html" not in form
    # without JavaScript: the whole page with the field open, posting to the same place
    page = client.get(f"/accounts/{ACCOUNT}/verify").get_data(as_text=True)
    assert "<html" in page and 'name="last_four"' in page
    assert f'action="/accounts/{ACCOUNT}/verify" method="post"' not in page  # attribute order
    assert f'method="post" action="/accounts/{ACCOUNT}/verify"' in page
    assert client.get("/accounts/99999999/verify").status_code == 404


def test_right_second_factor_shows_details_for_this_browser(
    client: FlaskClient, demo_db: Session
) -> None:
    response = verify(client, LAST_FOUR)
    assert response.status_code == 303
    assert response.headers["Location"] == f"/accounts/lookup?account_no={ACCOUNT}"
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    # 300 m³ opening balance this cycle: tier 1 of 3 at 2.61, 50 m³ left in it
    assert "全户已购气 300 m³，现处第1档（共3档），单价 2.61 元/m³" in html
    assert "本档还可购 50 m³" in html
    assert "上次购气" in html and "暂无购气记录" in html
    assert 'name="last_four"' not in html
    # another browser has not passed it
    other = client.application.test_client()
    assert "上次购气" not in other.get(f"/accounts/lookup?account_no={ACCOUNT}").get_data(
        as_text=True
    )


def test_second_factor_expires(app: Flask, client: FlaskClient, demo_db: Session) -> None:
    app.config["SECOND_FACTOR_SECONDS"] = -1
    verify(client, LAST_FOUR)
    html = client.get(f"/accounts/lookup?account_no={ACCOUNT}").get_data(as_text=True)
    assert "上次购气" not in html


def test_second_factor_over_htmx(client: FlaskClient, demo_db: Session) -> None:
    response = verify(client, LAST_FOUR, headers=HX)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert html.lstrip().startswith('<article class="account"') and "<html" not in html
    assert "全户已购气 300 m³" in html


def test_wrong_second_factor_says_so_and_shows_nothing(
    client: FlaskClient, demo_db: Session
) -> None:
    response = verify(client, "9999")
    assert response.status_code == 403
    html = response.get_data(as_text=True)
    assert "手机号后四位不正确" in html
    assert "上次购气" not in html and "全户已购气" not in html
    fragment = verify(client, "9999", headers=HX)
    assert fragment.status_code == 403  # base.html lets htmx swap it
    assert "手机号后四位不正确" in fragment.get_data(as_text=True)
    malformed = verify(client, "12a4")
    assert malformed.status_code == 400
    assert "请输入4位数字" in malformed.get_data(as_text=True)


def test_full_width_digits_are_accepted(client: FlaskClient, demo_db: Session) -> None:
    assert verify(client, "１００１").status_code == 303
    assert verify(client, LAST_FOUR, account="１０００-0001").status_code == 303


def test_second_factor_attempts_are_limited_per_account(
    app: Flask, client: FlaskClient, demo_db: Session
) -> None:
    app.config["RATELIMIT_SECOND_FACTOR"] = "3 per 15 minutes"
    for _ in range(3):
        assert verify(client, "0000").status_code == 403
    # whoever tries next, from wherever, even with the right digits: refused for now
    elsewhere = app.test_client()
    limited = verify(elsewhere, LAST_FOUR, environ_base={"REMOTE_ADDR": "10.0.0.9"})
    assert limited.status_code == 429
    html = limited.get_data(as_text=True)
    assert "操作太频繁，请 15 分钟后再试" in html
    assert "全户已购气" not in html
    assert int(limited.headers["Retry-After"]) > 800
    htmx = verify(client, LAST_FOUR, headers=HX)
    assert htmx.status_code == 429 and "操作太频繁" in htmx.get_data(as_text=True)
    # another account is not affected
    assert verify(client, "1002", account="10000002").status_code == 303


def test_every_guess_counts_but_malformed_input_does_not(
    app: Flask, client: FlaskClient, demo_db: Session
) -> None:
    app.config["RATELIMIT_SECOND_FACTOR"] = "2 per 15 minutes"
    for _ in range(3):
        assert verify(client, "12a4").status_code == 400
    assert verify(client, LAST_FOUR).status_code == 303
    assert verify(client, "0000").status_code == 403
    assert verify(client, LAST_FOUR).status_code == 429


def test_lookups_are_limited_per_client(app: Flask, client: FlaskClient, demo_db: Session) -> None:
    app.config["RATELIMIT_LOOKUP"] = "3 per minute"
    for _ in range(3):
        assert client.get(f"/accounts/lookup?account_no={ACCOUNT}").status_code == 200
    limited = client.get(f"/accounts/lookup?account_no={ACCOUNT}")
    assert limited.status_code == 429
    html = limited.get_data(as_text=True)
    assert "操作太频繁，请 1 分钟后再试" in html and "张*" not in html
    assert 1 <= int(limited.headers["Retry-After"]) <= 61
    fragment = client.get(f"/accounts/lookup?account_no={ACCOUNT}", headers=HX)
    assert fragment.status_code == 429
    assert "<html" not in fragment.get_data(as_text=True)
    assert "操作太频繁" in fragment.get_data(as_text=True)
    # in English too
    english = client.get(f"/accounts/lookup?account_no={ACCOUNT}&lang=en")
    assert "Too many tries" in english.get_data(as_text=True)
    # another client is not affected
    other = client.get(
        f"/accounts/lookup?account_no={ACCOUNT}", environ_base={"REMOTE_ADDR": "10.0.0.7"}
    )
    assert other.status_code == 200


def test_htmx_is_configured_to_swap_the_429_message(client: FlaskClient, demo_db: Session) -> None:
    html = client.get("/").get_data(as_text=True)
    config = re.search(r'<meta name="htmx-config" content=\'([^\']+)\'>', html)
    assert config is not None
    assert '{"code":"(400|403|404|409|422|429)","swap":true,"error":false}' in config.group(1)


def test_post_without_csrf_token_is_refused(client: FlaskClient, demo_db: Session) -> None:
    client.get("/")
    refused = client.post(f"/accounts/{ACCOUNT}/verify", data={"last_four": LAST_FOUR})
    assert refused.status_code == 403
    assert "页面已过期" in refused.get_data(as_text=True)
    wrong = client.post(
        f"/accounts/{ACCOUNT}/verify", data={"last_four": LAST_FOUR, "csrf_token": "forged"}
    )
    assert wrong.status_code == 403
    html = client.get(f"/accounts/lookup?account_no={ACCOUNT}").get_data(as_text=True)
    assert "全户已购气" not in html
    # the header htmx sends works as well as the form field
    by_header = client.post(
        f"/accounts/{ACCOUNT}/verify",
        data={"last_four": LAST_FOUR},
        headers={"X-CSRF-Token": csrf_token(client)},
    )
    assert by_header.status_code == 303


def test_order_post_without_csrf_creates_nothing(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    response = client.post(ORDERS, data={"by": "volume", "quantity": "100", "channel": "alipay"})
    assert response.status_code == 403
    assert count(demo_db, Order) == 0


# --- the buy page ----------------------------------------------------------------------


def test_buy_page_without_quantity(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    response = client.get(BUY)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "张*" in html and "张三" not in html and METER in html
    assert f'action="{ORDERS}"' in html and 'method="post"' in html
    assert 'hx-trigger="input changed delay:300ms"' in html
    assert "输入数量后显示报价" in html
    assert response.headers["Cache-Control"] == "no-store"


def test_buy_page_shows_the_tier_split(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    html = client.get(BUY, query_string={"by": "volume", "quantity": "100"}).get_data(as_text=True)
    assert "<html" in html
    # 300 m³ bought before: 50 m³ left in tier 1 at 2.61, then 50 m³ at 2.83
    assert re.search(r"第1档</td><td>50 m³</td>\s*<td>2.61</td><td>¥130.50</td>", html)
    assert re.search(r"第2档</td><td>50 m³</td>\s*<td>2.83</td><td>¥141.50</td>", html)
    assert '<td class="total">¥272.00</td>' in html
    assert '<input type="hidden" name="quoted_amount" value="27200">' in html
    assert '<input type="hidden" name="quoted_volume" value="10000">' in html


def test_quote_fragment_for_htmx(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    response = client.get(BUY, query_string={"by": "amount", "quantity": "100"}, headers=HX)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<html" not in html and "<form" not in html
    # by amount: the largest volume whose cost is within ¥100: 38.31 m³ costs ¥99.99
    assert '<td class="total">¥99.99</td>' in html and "38.31 m³" in html
    assert "HX-Request" in response.headers["Vary"]


@pytest.mark.parametrize(
    ("query", "text"),
    [
        ({"by": "volume", "quantity": "0.5"}, "每次最少购气 1 m³"),
        ({"by": "volume", "quantity": "301"}, "每次最多购气 300 m³"),
        ({"by": "amount", "quantity": "1"}, "金额不够最低购气量 1 m³，至少需要 ¥2.61"),
        ({"by": "amount", "quantity": "5000"}, "金额超过上限：最多可买 300 m³"),
        ({"by": "volume", "quantity": "abc"}, "购气量请填写数字"),
        ({"by": "amount", "quantity": "1.234"}, "金额请填写数字"),
        ({"by": "volume", "quantity": "0"}, "请输入大于零的数"),
    ],
)
def test_refused_quotes_in_plain_words(
    client: FlaskClient,
    demo_db: Session,
    fakes: dict[str, FakeProvider],
    query: dict[str, str],
    text: str,
) -> None:
    fragment = client.get(BUY, query_string=query, headers=HX)
    assert fragment.status_code == 200
    assert text in fragment.get_data(as_text=True)
    assert "quoted_amount" not in fragment.get_data(as_text=True)
    page = client.get(BUY, query_string=query)
    assert page.status_code == 422
    assert text in page.get_data(as_text=True)


def test_over_capacity_in_english(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    meter = demo_db.scalar(select(Meter).where(Meter.meter_no == METER))
    assert meter is not None
    meter.capacity = 5000
    meter.last_remaining = 2000
    demo_db.flush()
    html = client.get(
        BUY, query_string={"by": "volume", "quantity": "40", "lang": "en"}, headers=HX
    ).get_data(as_text=True)
    assert "This meter can take at most 30 m³ more now" in html


def test_live_quotes_and_orders_are_limited_per_client(
    app: Flask, client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    app.config["RATELIMIT_QUOTE"] = "2 per minute"
    app.config["RATELIMIT_ORDER"] = "1 per minute"
    for _ in range(2):
        assert client.get(BUY, query_string={"quantity": "1"}, headers=HX).status_code == 200
    limited = client.get(BUY, query_string={"quantity": "1"}, headers=HX)
    assert limited.status_code == 429
    assert "操作太频繁" in limited.get_data(as_text=True)
    assert "<html" not in limited.get_data(as_text=True)
    assert confirm(client).status_code == 303
    again = confirm(client)
    assert again.status_code == 429 and "<html" in again.get_data(as_text=True)
    assert count(demo_db, Order) == 1


def test_unknown_meter_is_404(client: FlaskClient, demo_db: Session) -> None:
    assert client.get(f"/accounts/{ACCOUNT}/meters/M100000021/buy").status_code == 404
    assert client.get("/accounts/99999999/meters/M1/buy").status_code == 404


def test_buy_page_in_english(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    html = client.get(BUY, query_string={"quantity": "100", "lang": "en"}).get_data(as_text=True)
    assert "Tier 1" in html and "Price (yuan/m³)" in html and "Confirm and pay" in html
    assert "确认并付款" not in html


@pytest.mark.parametrize(
    ("user_agent", "channels"),
    [(ALIPAY_UA, ["alipay"]), (WECHAT_UA, ["wechat"]), (PHONE_UA, ["alipay", "wechat"])],
)
def test_channels_fit_where_the_page_is_open(
    client: FlaskClient,
    demo_db: Session,
    fakes: dict[str, FakeProvider],
    user_agent: str,
    channels: list[str],
) -> None:
    html = client.get(BUY, headers={"User-Agent": user_agent}).get_data(as_text=True)
    assert re.findall(r'name="channel" value="(\w+)"', html) == channels


def test_payment_options() -> None:
    both = {"alipay", "wechat"}
    assert payment_options(ALIPAY_UA, both) == [payment_options(PHONE_UA, both)[0]]
    assert [(o.channel, o.scene) for o in payment_options(WECHAT_UA, both)] == [
        ("wechat", PayScene.h5)
    ]
    assert [(o.channel, o.scene) for o in payment_options(PHONE_UA, both)] == [
        ("alipay", PayScene.wap),
        ("wechat", PayScene.h5),
    ]
    assert payment_options(PHONE_UA, {"alipay"}) == [payment_options(ALIPAY_UA, both)[0]]
    assert payment_options(WECHAT_UA, {"alipay"}) == []


def test_parse_quantity() -> None:
    assert parse_quantity("volume", "20") == (2000, None)
    assert parse_quantity("volume", " 20.5 ") == (2050, None)
    assert parse_quantity("amount", "９９.５０") == (None, 9950)
    assert parse_quantity("amount", "¥100") == (None, 10000)


# --- ordering --------------------------------------------------------------------------


def test_confirm_creates_the_order_and_goes_to_the_provider(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    calls: list[PaymentRequest] = []
    original = fakes["alipay"].create_payment

    def recording(request: PaymentRequest) -> PaymentStart:
        calls.append(request)
        return original(request)

    fakes["alipay"].create_payment = recording  # type: ignore[method-assign]
    response = confirm(client)
    assert response.status_code == 303
    order = demo_db.scalars(select(Order)).one()
    assert response.headers["Location"] == f"https://fake.invalid/pay/{order.order_no}"
    assert (order.amount, order.volume, order.channel, order.state) == (
        27200,
        10000,
        "alipay",
        "paying",
    )
    assert [p["amount"] for p in order.quote["parts"]] == [13050, 14150]
    assert order.expires_at is not None and order.expires_at > order.created_at
    assert order.expires_at - order.created_at == dt.timedelta(seconds=900)
    (request,) = calls
    assert request.amount == 27200 and request.scene == PayScene.wap
    assert request.subject == f"燃气费 户号{ACCOUNT} 100.00立方米"
    assert request.subject.encode("gbk")  # Alipay's bills are GBK
    assert request.notify_url == "http://localhost/payments/alipay/notify"
    assert request.return_url == f"http://localhost/orders/{order.order_no}"


def test_wechat_in_wechat_uses_h5(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    response = confirm(client, channel="wechat", ua=WECHAT_UA)
    assert response.status_code == 303
    assert demo_db.scalars(select(Order)).one().channel == "wechat"
    # a channel not offered here is refused
    refused = confirm(client, channel="alipay", ua=WECHAT_UA)
    assert refused.status_code == 422
    assert "请选择付款方式" in refused.get_data(as_text=True)


def test_the_same_form_twice_is_one_order(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    page = client.get(BUY, query_string={"quantity": "100"}).get_data(as_text=True)
    hidden = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', page))
    data = {**hidden, "by": "volume", "quantity": "100", "channel": "alipay"}
    first = client.post(ORDERS, data=data)
    second = client.post(ORDERS, data=data)
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    assert count(demo_db, Order) == 1


def test_a_changed_price_is_shown_again_not_charged(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    response = confirm(client, quoted_amount="26100")  # what the page showed earlier
    assert response.status_code == 409
    # a quoted figure that is not a number is no confirmation either
    assert confirm(client, quoted_amount="²⁷²⁰⁰").status_code == 200
    html = response.get_data(as_text=True)
    assert "价格有变化" in html
    assert '<input type="hidden" name="quoted_amount" value="27200">' in html
    assert count(demo_db, Order) == 0


def test_without_javascript_the_first_submit_shows_the_quote(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    token = csrf_token(client)
    response = client.post(
        ORDERS,
        data={"by": "volume", "quantity": "100", "channel": "alipay", "csrf_token": token},
    )
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "请核对报价，再确认付款" in html and '<td class="total">¥272.00</td>' in html
    assert count(demo_db, Order) == 0


def test_a_refused_quote_creates_no_order(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    token = csrf_token(client)
    response = client.post(
        ORDERS,
        data={"by": "volume", "quantity": "400", "channel": "alipay", "csrf_token": token},
    )
    assert response.status_code == 422
    assert "每次最多购气 300 m³" in response.get_data(as_text=True)
    assert count(demo_db, Order) == 0


def test_a_provider_failure_is_said_and_the_order_stays(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    def failing(request: PaymentRequest) -> PaymentStart:
        raise PaymentError("gateway down")

    fakes["alipay"].create_payment = failing  # type: ignore[method-assign]
    response = confirm(client)
    assert response.status_code == 502
    order = demo_db.scalars(select(Order)).one()
    assert order.state == "created"
    html = response.get_data(as_text=True)
    assert "支付渠道暂时无法使用" in html and order.order_no in html


# --- result page and receipt -----------------------------------------------------------


def test_result_page_waits_then_says_paid_with_the_kiosks(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    confirm(client)
    order = demo_db.scalars(select(Order)).one()
    url = f"/orders/{order.order_no}"
    waiting = client.get(url)
    assert waiting.status_code == 200
    html = waiting.get_data(as_text=True)
    assert "正在等待付款结果" in html
    assert f'hx-get="{url}" hx-trigger="load delay:1s" hx-swap="outerHTML"' in html
    assert '<meta http-equiv="refresh" content="5">' in html
    assert "张*" in html and "张三" not in html and "幸福路1号" not in html
    partial = client.get(url, headers=HX).get_data(as_text=True)
    assert partial.lstrip().startswith('<section id="order-status"')
    assert 'hx-trigger="load delay:1s"' in partial

    notify(client, order)

    paid = client.get(url, headers=HX).get_data(as_text=True)
    assert "付款成功" in paid and "hx-trigger" not in paid
    assert "已付 ¥272.00，购气 100 m³（燃气表 M100000011）" in paid
    assert "幸福路社区服务站自助机" in paid and "示范市和平区幸福路1号社区服务站一层" in paid
    assert "开放时间 07:00–22:00" in paid and "市区分公司营业厅" in paid
    assert f'href="{url}/receipt"' in paid
    page = client.get(url).get_data(as_text=True)
    assert 'http-equiv="refresh"' not in page


def test_closed_order_says_so(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    confirm(client)
    order = demo_db.scalars(select(Order)).one()
    order.state = "closed"
    demo_db.flush()
    html = client.get(f"/orders/{order.order_no}", headers=HX).get_data(as_text=True)
    assert "订单已关闭" in html and "没有扣款" in html and "hx-trigger" not in html
    assert client.get(f"/orders/{order.order_no}/receipt").status_code == 404


def test_result_page_stops_waiting_after_expiry(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    confirm(client)
    order = demo_db.scalars(select(Order)).one()
    assert order.expires_at is not None
    order.expires_at = order.expires_at - dt.timedelta(minutes=20)
    demo_db.flush()
    html = client.get(f"/orders/{order.order_no}").get_data(as_text=True)
    assert "订单已超时" in html and "不会扣款" in html
    assert "hx-trigger" not in html and 'http-equiv="refresh"' not in html
    # a late notify still counts
    notify(client, order)
    assert "付款成功" in client.get(f"/orders/{order.order_no}").get_data(as_text=True)


def test_unknown_order_is_404(client: FlaskClient, demo_db: Session) -> None:
    assert client.get("/orders/20260101000000").status_code == 404
    assert client.get("/orders/" + "9" * 40).status_code == 404


def test_receipt_only_once_paid(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    confirm(client)
    order = demo_db.scalars(select(Order)).one()
    receipt = f"/orders/{order.order_no}/receipt"
    assert client.get(receipt).status_code == 404
    notify(client, order)
    response = client.get(receipt)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for text in (
        "购气电子凭证",
        order.order_no,
        ACCOUNT,
        "张*",
        METER,
        "100 m³",
        "¥272.00",
        "支付宝",
        "第1档",
        "第2档",
        "¥130.50",
        "¥141.50",
    ):
        assert text in html, text
    assert "张三" not in html
    demo_db.expire_all()
    paid_at = demo_db.get(Order, order.id).paid_at  # type: ignore[union-attr]
    assert paid_at is not None
    local = paid_at.astimezone(dt.timezone(dt.timedelta(hours=8))).strftime("%Y-%m-%d %H:%M")
    assert f"{local} （北京时间）" in html
    css = (ROOT / "static/css/app.css").read_text()
    assert re.search(
        r"@media print \{\s*header\.site, footer\.site, \.no-print \{ display: none; \}", css
    )


def test_verified_page_shows_purchases_and_gas_waiting(
    client: FlaskClient, demo_db: Session, fakes: dict[str, FakeProvider]
) -> None:
    confirm(client)
    order = demo_db.scalars(select(Order)).one()
    notify(client, order)
    verify(client, LAST_FOUR)
    html = client.get(f"/accounts/lookup?account_no={ACCOUNT}").get_data(as_text=True)
    assert "全户已购气 400 m³，现处第2档" in html
    assert "100 m³ 已付款，请到圈存机写卡" in html
    assert f'href="/orders/{order.order_no}/receipt"' in html
    assert "已付款" in html and "待圈存" in html
    assert count(demo_db, Credit) == 1


def test_verified_page_warns_of_a_closed_valve_and_alarms(
    client: FlaskClient, demo_db: Session
) -> None:
    meter = demo_db.scalar(select(Meter).where(Meter.meter_no == METER))
    assert meter is not None
    demo_db.add(
        MeterReport(
            meter_id=meter.id,
            report_seq=1,
            applied_count=0,
            remaining=0,
            total_used=0,
            total_purchased=0,
            valve_open=False,
            alarms="leak",
            reported_at=dt.datetime.now(dt.UTC),
        )
    )
    demo_db.flush()
    assert "燃气泄漏" not in client.get(f"/accounts/lookup?account_no={ACCOUNT}").get_data(
        as_text=True
    )
    verify(client, LAST_FOUR)
    html = client.get(f"/accounts/lookup?account_no={ACCOUNT}&lang=en").get_data(as_text=True)
    assert "Closed (no gas left, or locked)" in html
    assert '<dd class="alarm">gas leak' in html and "Close the gas valve now" in html


def test_every_new_message_is_translated() -> None:
    """The purchase flow's strings (Python and templates) all have an English msgstr."""
    with (ROOT / "portal/translations/en/LC_MESSAGES/messages.po").open("rb") as po:
        catalog = read_po(po)
    sources = [
        *(ROOT / "portal/templates").glob("*.html"),
        ROOT / "portal/purchase.py",
        ROOT / "portal/public.py",
        ROOT / "portal/format.py",
    ]
    msgids = set()
    for source in sources:
        method = "jinja2" if source.suffix == ".html" else "python"
        for _lineno, message, _comments, _context in extract_from_file(
            method, str(source), keywords={"_": None, "gettext": None}
        ):
            msgids.add(message)
    assert "请输入购气量或金额。" in msgids and "购气电子凭证" in msgids
    missing = [m for m in msgids if not (catalog.get(m) and catalog[m].string)]
    assert missing == []


def test_limits_share_the_flask_limiter_storage(
    app: Flask, client: FlaskClient, demo_db: Session
) -> None:
    """Made by init_app (as create_app will), the counts live in Flask-Limiter's storage."""
    limiter = limits.init_app(app)
    app.config["RATELIMIT_LOOKUP"] = "2 per minute"
    for _ in range(2):
        assert client.get(f"/accounts/lookup?account_no={ACCOUNT}").status_code == 200
    assert client.get(f"/accounts/lookup?account_no={ACCOUNT}").status_code == 429
    assert app.extensions["ranqi_rate_limiter"] is limiter.limiter
    limiter.reset()
    assert client.get(f"/accounts/lookup?account_no={ACCOUNT}").status_code == 200
