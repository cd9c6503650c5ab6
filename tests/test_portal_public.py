"""The residents' first pages: home, account look-up (full page and htmx), public information."""

from __future__ import annotations

import datetime as dt
import gzip
import re
from decimal import Decimal
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_file
from babel.messages.pofile import read_po
from flask.testing import FlaskClient
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from models import Account, Branch, ServiceNotice, TariffTier, demo
from models.clock import local_date
from models.tariffs import DiscountPolicy
from portal.format import (
    notice_blocks,
    price,
    tel_href,
    tier_ranges,
    volume,
    volume_number,
    yuan,
)
from tests.factories import gen_account, gen_branch, gen_category, gen_tariff

ROOT = Path(__file__).resolve().parent.parent
HX = {"HX-Request": "true"}
#: the first load of the home page (HTML + CSS + JS, gzip) must stay within this
PAGE_BUDGET = 60 * 1024


@pytest.fixture
def demo_db(db: Session) -> Session:
    demo.load(db)
    return db


# --- display helpers -------------------------------------------------------------------


def test_money_volume_price_formatting() -> None:
    assert yuan(26100) == "¥261.00"
    assert yuan(5) == "¥0.05"
    assert yuan(123456789) == "¥1,234,567.89"
    assert yuan(-50) == "-¥0.50"
    assert volume(35000) == "350 m³"
    assert volume(12345) == "123.45 m³"
    assert volume(12340) == "123.40 m³"
    assert volume_number(5) == "0.05"
    assert price(Decimal("2.6100")) == "2.61"
    assert price(Decimal("3")) == "3.00"
    assert price(Decimal("2.6125")) == "2.6125"
    assert price(Decimal("100.0000")) == "100.00"


def test_tel_href_dials_the_number_only() -> None:
    assert tel_href("400-000-0000") == "tel:4000000000"
    assert tel_href("+86 10 1234 5678") == "tel:+861012345678"
    assert tel_href("96777（24小时）") == "tel:96777"


def test_notice_blocks_paragraphs_and_lists() -> None:
    body = "Intro line\nsecond line\n\n- one\n- two\r\n\nClosing\n- item"
    blocks = [(b.kind, b.lines) for b in notice_blocks(body)]
    assert blocks == [
        ("p", ["Intro line", "second line"]),
        ("ul", ["one", "two"]),
        ("p", ["Closing"]),
        ("ul", ["item"]),
    ]


def test_tier_ranges_start_where_the_previous_tier_ends() -> None:
    tiers = [
        TariffTier(position=2, upper_bound=50000, price=Decimal("2.83")),
        TariffTier(position=1, upper_bound=35000, price=Decimal("2.61")),
        TariffTier(position=3, upper_bound=None, price=Decimal("4.23")),
    ]
    assert [(r.lower, r.upper, r.price) for r in tier_ranges(tiers)] == [
        (0, 35000, Decimal("2.61")),
        (35000, 50000, Decimal("2.83")),
        (50000, None, Decimal("4.23")),
    ]


# --- layout and language ---------------------------------------------------------------


def test_home_is_chinese_by_default(client: FlaskClient, demo_db: Session) -> None:
    response = client.get("/")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert '<html lang="zh-CN">' in html
    assert "网上购气，就近圈存" in html
    assert "Buy gas online" not in html
    assert 'action="/accounts/lookup"' in html and 'name="account_no"' in html
    assert 'hx-get="/accounts/lookup"' in html and 'hx-push-url="true"' in html
    assert re.search(r'<script src="/static/vendor/htmx.min.js" defer>', html)
    assert "示范燃气集团市区分公司" in html  # the branch in the header
    assert 'href="tel:4000000000"' in html  # the hotline in the footer
    assert 'href="/info?branch=DEMO-CITY"' in html
    assert 'href="/?lang=en"' in html
    assert "lang=" not in response.headers.get("Set-Cookie", "")


def test_english_when_chosen_and_remembered(client: FlaskClient, demo_db: Session) -> None:
    response = client.get("/?lang=en")
    html = response.get_data(as_text=True)
    assert '<html lang="en">' in html
    assert "Buy gas online, load it nearby" in html
    assert "网上购气" not in html
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith("lang=en;")
    assert "Max-Age=31536000" in cookie
    assert "SameSite=Lax" in cookie
    # the cookie carries the choice to the next page, without ?lang=
    again = client.get("/").get_data(as_text=True)
    assert '<html lang="en">' in again
    back = client.get("/?lang=zh")
    assert back.headers["Set-Cookie"].startswith("lang=zh;")
    assert '<html lang="zh-CN">' in back.get_data(as_text=True)


def test_language_switch_keeps_the_page_and_its_query(
    client: FlaskClient, demo_db: Session
) -> None:
    html = client.get("/accounts/lookup?account_no=10000001").get_data(as_text=True)
    assert 'href="/accounts/lookup?account_no=10000001&amp;lang=en"' in html


def test_pages_vary_on_language_inputs(client: FlaskClient, demo_db: Session) -> None:
    vary = client.get("/info").headers["Vary"]
    assert "Cookie" in vary and "Accept-Language" in vary


def test_every_message_has_an_english_translation() -> None:
    """Chinese is the source language; every string the pages use has an English msgstr."""
    with (ROOT / "portal/translations/en/LC_MESSAGES/messages.po").open("rb") as po:
        catalog = read_po(po)
    keywords = {"_": None, "gettext": None}
    sources = [
        *(ROOT / "portal/templates").glob("*.html"),
        ROOT / "portal/public.py",
        ROOT / "portal/format.py",
    ]
    msgids = set()
    for source in sources:
        method = "jinja2" if source.suffix == ".html" else "python"
        for _lineno, message, _comments, _context in extract_from_file(
            method, str(source), keywords=keywords
        ):
            msgids.add(message)
    assert len(msgids) > 40
    missing = [m for m in msgids if not (catalog.get(m) and catalog[m].string)]
    assert missing == []
    assert not [m.id for m in catalog if m.id and m.fuzzy]


# --- account look-up -------------------------------------------------------------------


def test_lookup_found_shows_masked_data_only(client: FlaskClient, demo_db: Session) -> None:
    response = client.get("/accounts/lookup?account_no=10000003")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert '<html lang="zh-CN">' in html  # the whole page, with the result in it
    assert "王*明" in html
    assert "王小明" not in html
    assert "示范市和平区幸福路****" in html
    assert "2单元201" not in html
    assert "13800001003" not in html and "138****1003" not in html
    assert "M100000031" in html and "IC卡燃气表" in html
    assert "居民" in html
    assert response.headers["Cache-Control"] == "no-store"
    assert "HX-Request" in response.headers["Vary"]


def test_lookup_found_in_english(client: FlaskClient, demo_db: Session) -> None:
    html = client.get("/accounts/lookup?account_no=10000010&lang=en").get_data(as_text=True)
    assert "示范**有限公司" in html
    assert "示范餐饮有限公司" not in html
    assert "Non-residential" in html
    assert "IC-card gas meter" in html


def test_lookup_tolerates_spaces_and_full_width_digits(
    client: FlaskClient, demo_db: Session
) -> None:
    response = client.get("/accounts/lookup", query_string={"account_no": " １０００ 0002 "})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert "李*" in html
    assert "M100000021" in html and "M100000022" in html


def test_lookup_htmx_gets_the_fragment(client: FlaskClient, demo_db: Session) -> None:
    response = client.get("/accounts/lookup?account_no=10000001", headers=HX)
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "<html" not in html and "<main" not in html and "<form" not in html
    assert "张*" in html and "张三" not in html
    assert "HX-Request" in response.headers["Vary"]
    # header and footer come along out of band: language links for this URL, hotline
    assert '<header class="site" id="site-header" hx-swap-oob="true">' in html
    assert 'href="/accounts/lookup?account_no=10000001&amp;lang=en"' in html
    assert '<footer class="site" id="site-footer" hx-swap-oob="true">' in html
    assert "400-000-0000" in html


def test_lookup_history_restore_gets_the_whole_page(client: FlaskClient, demo_db: Session) -> None:
    headers = {**HX, "HX-History-Restore-Request": "true"}
    html = client.get("/accounts/lookup?account_no=10000001", headers=headers).get_data(
        as_text=True
    )
    assert "<html" in html and "张*" in html
    unknown = client.get("/accounts/lookup?account_no=99999999", headers=headers)
    assert unknown.status_code == 200  # htmx ignores a history restore answered with 404
    assert "<html" in unknown.get_data(as_text=True)


def test_lookup_unknown_says_not_found_and_nothing_more(
    client: FlaskClient, demo_db: Session
) -> None:
    accounts_before = demo_db.scalar(select(func.count(Account.id)))
    full = client.get("/accounts/lookup?account_no=99999999")
    assert full.status_code == 404
    page = full.get_data(as_text=True)
    assert "未找到该户号" in page
    assert 'value="99999999"' in page  # the form keeps what was typed
    fragment = client.get("/accounts/lookup?account_no=99999999", headers=HX)
    assert fragment.status_code == 200
    text = fragment.get_data(as_text=True)
    assert "未找到该户号" in text
    assert "燃气表" not in text and "户名" not in text
    assert "hx-swap-oob" in text  # the header's language links follow the pushed URL
    assert demo_db.scalar(select(func.count(Account.id))) == accounts_before
    assert not demo_db.new


@pytest.mark.parametrize("raw", ["12345", "1" * 21, "1000000a", "<b>1</b>"])
def test_lookup_malformed(client: FlaskClient, demo_db: Session, raw: str) -> None:
    full = client.get("/accounts/lookup", query_string={"account_no": raw})
    assert full.status_code == 400
    assert "户号应为6至20位数字" in full.get_data(as_text=True)
    assert "<b>1</b>" not in full.get_data(as_text=True)
    fragment = client.get("/accounts/lookup", query_string={"account_no": raw}, headers=HX)
    assert fragment.status_code == 200
    assert "户号应为6至20位数字" in fragment.get_data(as_text=True)


def test_lookup_blank(client: FlaskClient, demo_db: Session) -> None:
    full = client.get("/accounts/lookup?account_no=+")
    assert full.status_code == 400
    assert "请输入户号" in full.get_data(as_text=True)
    fragment = client.get("/accounts/lookup", headers=HX)
    assert fragment.status_code == 200
    assert "请输入户号" in fragment.get_data(as_text=True)


def test_lookup_marks_meters_not_in_service(client: FlaskClient, db: Session) -> None:
    account = gen_account(db, meters=2)
    account.meters[1].status = "suspended"
    db.flush()
    html = client.get(f"/accounts/lookup?account_no={account.account_no}&lang=en").get_data(
        as_text=True
    )
    assert html.count("In service") == 0
    assert html.count('<span class="tag">Suspended</span>') == 1


def test_lookup_shows_the_accounts_own_branch(client: FlaskClient, demo_db: Session) -> None:
    other = gen_branch(demo_db, name="第二分公司", hotline="400-222-2222")
    account = gen_account(demo_db, branch=other)
    html = client.get(f"/accounts/lookup?account_no={account.account_no}").get_data(as_text=True)
    assert "第二分公司" in html and "400-222-2222" in html
    assert "400-000-0000" not in html
    fragment = client.get(f"/accounts/lookup?account_no={account.account_no}", headers=HX)
    assert "400-222-2222" in fragment.get_data(as_text=True)


# --- public information ----------------------------------------------------------------


def test_info_shows_tariffs_in_force(client: FlaskClient, demo_db: Session) -> None:
    html = client.get("/info").get_data(as_text=True)
    for text in ("2.61 元/m³", "2.83 元/m³", "4.23 元/m³", "3.35 元/m³"):
        assert text in html
    assert "0–350 m³" in html and "350–500 m³" in html and "500 m³以上" in html
    assert "不分档" in html  # the single-tier non-residential tariff
    assert "每次购气 1 m³ 至 300 m³" in html
    assert "每年1月1日起算" in html
    assert "5人及以上家庭：各档阶梯上限提高 100 m³" in html
    assert "低保户：每个周期前 50 m³ 免费" in html
    assert "居民" in html and "非居民" in html
    assert "400-000-0000" in html


def test_info_in_english(client: FlaskClient, demo_db: Session) -> None:
    html = client.get("/info?lang=en").get_data(as_text=True)
    assert "2.61 yuan/m³" in html and "Above 500 m³" in html and "0–350 m³" in html
    assert "The tier cycle starts on January 1 each year" in html
    assert "Households of 5 or more: each tier limit raised by 100 m³" in html
    assert "Residential" in html and "Non-residential" in html
    assert "How to buy gas" in html and "Our commitments" in html
    assert "购气业务流程" not in html
    assert "<li>Pay with Alipay or WeChat Pay.</li>" in html


def test_info_notices_in_chinese(client: FlaskClient, demo_db: Session) -> None:
    html = client.get("/info").get_data(as_text=True)
    assert "购气业务流程" in html and "服务承诺" in html
    assert "<li>用支付宝或微信支付。</li>" in html
    assert "How to buy gas" not in html


def test_info_falls_back_to_the_chinese_notice(client: FlaskClient, demo_db: Session) -> None:
    demo_db.execute(
        delete(ServiceNotice).where(
            ServiceNotice.topic == "commitments", ServiceNotice.lang == "en"
        )
    )
    html = client.get("/info?lang=en").get_data(as_text=True)
    assert "How to buy gas" in html
    assert '<section class="notice-text" lang="zh-CN">' in html
    assert "服务承诺" in html


def test_info_escapes_notice_html(client: FlaskClient, db: Session) -> None:
    branch = gen_branch(db)
    db.add(
        ServiceNotice(
            branch=branch,
            topic="commitments",
            lang="zh",
            title="<i>承诺</i>",
            body='<script>alert(1)</script>\n\n- <img src=x onerror="alert(2)">',
        )
    )
    html = client.get(f"/info?branch={branch.code}").get_data(as_text=True)
    assert "<script>alert" not in html and "<img src=x" not in html and "<i>承诺" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<li>&lt;img src=x onerror=&#34;alert(2)&#34;&gt;</li>" in html
    assert "&lt;i&gt;承诺&lt;/i&gt;" in html


def test_info_branch_picker_only_with_several_branches(
    client: FlaskClient, demo_db: Session
) -> None:
    assert "选择分公司" not in client.get("/info").get_data(as_text=True)
    other = gen_branch(demo_db, name="第二分公司", hotline="400-222-2222")
    gen_tariff(
        demo_db,
        other,
        category=gen_category(demo_db, "residential"),
        tiers=[TariffTier(position=1, upper_bound=None, price=Decimal("2.99"))],
    )
    first = client.get("/info").get_data(as_text=True)
    assert "选择分公司" in first
    assert f'href="/info?branch={other.code}"' in first
    assert "2.61 元/m³" in first and "2.99" not in first  # the first branch by default
    second = client.get(f"/info?branch={other.code}").get_data(as_text=True)
    assert "2.99 元/m³" in second and "2.61" not in second
    assert "400-222-2222" in second
    assert "购气业务流程" not in second  # the demo branch's notices stay with it
    unknown = client.get("/info?branch=NOPE")
    assert unknown.status_code == 404
    assert "未找到该分公司" in unknown.get_data(as_text=True)
    assert "2.61" not in unknown.get_data(as_text=True)
    assert f'href="/info?branch={other.code}"' in unknown.get_data(as_text=True)


def test_info_shows_only_the_tariff_in_force_today(client: FlaskClient, db: Session) -> None:
    branch = gen_branch(db)
    today = local_date(dt.datetime.now(dt.UTC))
    gen_tariff(
        db,
        branch,
        effective_from=today - dt.timedelta(days=400),
        tiers=[TariffTier(position=1, upper_bound=None, price=Decimal("1.11"))],
    )
    gen_tariff(
        db,
        branch,
        effective_from=today - dt.timedelta(days=10),
        tiers=[TariffTier(position=1, upper_bound=None, price=Decimal("2.22"))],
        discounts=[DiscountPolicy(kind="percentage", percent_off=Decimal("5.00"))],
    )
    gen_tariff(
        db,
        branch,
        effective_from=today + dt.timedelta(days=1),
        tiers=[TariffTier(position=1, upper_bound=None, price=Decimal("3.33"))],
    )
    html = client.get(f"/info?branch={branch.code}").get_data(as_text=True)
    assert "2.22 元/m³" in html
    assert "1.11" not in html and "3.33" not in html
    assert "所有用户：每次购气优惠 5%" in html


def test_info_without_any_branch(client: FlaskClient, db: Session) -> None:
    assert db.scalar(select(func.count(Branch.id))) == 0
    response = client.get("/info")
    assert response.status_code == 200
    assert "暂无公示信息" in response.get_data(as_text=True)


# --- weight ----------------------------------------------------------------------------


def test_home_first_load_within_budget(client: FlaskClient, demo_db: Session) -> None:
    """HTML + CSS + JS (+ icon) of the home page, gzip-compressed, within 60 KB."""
    html = client.get("/").get_data()
    assets = re.findall(rb'(?:src|href)="(/static/[^"]+)"', html)
    assert {"/static/css/app.css", "/static/vendor/htmx.min.js"} <= {a.decode() for a in assets}
    total = len(gzip.compress(html, 9))
    for asset in set(assets):
        response = client.get(asset.decode())
        assert response.status_code == 200, asset
        total += len(gzip.compress(response.get_data(), 9))
        response.close()
    assert total <= PAGE_BUDGET
