"""A resident on a phone buys gas, in real headless Chromium, through the sandbox payment.

The app runs on a loopback port in sandbox payment mode with the demo utility; Chromium
opens it at a phone's viewport (390×844 CSS px, 2× pixels, touch, a phone browser's user
agent that is neither Alipay's nor WeChat's, so both channels are offered). The resident
looks the account up (htmx swaps the result in), opens the buy page, types a quantity
(htmx swaps in the live quote with its tiers), chooses a channel, confirms, pays on the
sandbox cashier, comes back to the result page, and the page (polling) turns to "paid"
once the sandbox delivers the signed notify. On every page: no horizontal scrolling and
tap targets at least 44 px. Each step is screenshotted into test-artifacts/.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from playwright.sync_api import Browser, BrowserContext, Page, expect
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from models import demo, ledger
from models.orders import Credit, Order, PaymentEvent
from portal import create_app, providers
from portal import db as portal_db
from tests.browser.conftest import free_port
from tests.http_server import serve

#: an iPhone's Safari: not Alipay's or WeChat's in-app browser, so both channels show
PHONE_UA = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
PHONE_WIDTH = 390


def new_phone(browser: Browser) -> BrowserContext:
    """A browser context that is a phone: 390×844 CSS px at 2×, touch, Safari's agent."""
    return browser.new_context(
        viewport={"width": PHONE_WIDTH, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        user_agent=PHONE_UA,
        locale="zh-CN",
        timezone_id="Asia/Shanghai",
    )


#: the smallest tap target a finger hits reliably (Apple HIG; WCAG 2.5.5)
MIN_TARGET_PX = 44
#: the home page's first load, all responses' encoded (compressed) bodies together
HOME_BUDGET_BYTES = 60 * 1024
#: how long the result page may take to notice the notify (it polls every second)
POLL_TIMEOUT_MS = 10_000

#: What a finger can hit, measured in the page. A control inside (or named by) a label
#: counts the label's box too: tapping the label works the control. A link inside running
#: text is exempt, as WCAG 2.5.5 exempts inline targets: its line is the text's line.
TAP_TARGETS_JS = """
(minimum) => {
  const selector = 'a[href], button, input:not([type=hidden]), select, textarea, summary';
  const small = [], inline = [];
  let count = 0;
  for (const el of document.querySelectorAll(selector)) {
    const style = getComputedStyle(el);
    let rect = el.getBoundingClientRect();
    if (style.visibility === 'hidden' || rect.width === 0 || rect.height === 0) continue;
    count += 1;
    const labels = [el.closest('label'), ...(el.labels ? Array.from(el.labels) : [])];
    let width = rect.width, height = rect.height;
    for (const label of labels) {
      if (!label) continue;
      const box = label.getBoundingClientRect();
      width = Math.max(width, box.width);
      height = Math.max(height, box.height);
    }
    if (width >= minimum && height >= minimum) continue;
    if (el.tagName === 'A' && style.display === 'inline') {
      const block = el.parentElement;
      const own = (el.textContent || '').trim().length;
      const around = (block ? block.textContent || '' : '').trim().length;
      const what = `"${(el.textContent || '').trim().slice(0, 30)}" ${Math.round(width)}×${
        Math.round(height)}`;
      if (around > own) { inline.push(what); continue; }  // a link inside a sentence
    }
    small.push(`${el.tagName.toLowerCase()} "${(el.textContent || el.name || '').trim()
      .slice(0, 30)}" ${Math.round(width)}×${Math.round(height)}`);
  }
  return {count, small, inline};
}
"""


@dataclass(frozen=True)
class Purchase:
    """One resident's purchase: who, how, and what the quote must say."""

    channel: str
    account_no: str
    by: str
    quantity: str
    #: the quote table's body rows as shown: tier, volume, price, amount
    rows: list[list[str]]
    total_volume: str
    total_amount: str


ALIPAY_BY_VOLUME = Purchase(
    channel="alipay",
    account_no="10000001",  # 300 m³ bought this cycle: 100 more cross into tier 2 at 350
    by="volume",
    quantity="100",
    rows=[["第1档", "50 m³", "2.61", "¥130.50"], ["第2档", "50 m³", "2.83", "¥141.50"]],
    total_volume="100 m³",
    total_amount="¥272.00",
)
WECHAT_BY_AMOUNT = Purchase(
    channel="wechat",
    account_no="10000005",  # nothing bought this cycle: tier 1 at 2.61
    by="amount",
    quantity="100",  # the largest volume within ¥100: 38.31 m³ costs ¥99.99 (38.32: ¥100.02)
    rows=[["第1档", "38.31 m³", "2.61", "¥99.99"]],
    total_volume="38.31 m³",
    total_amount="¥99.99",
)


class Steps:
    """Screenshots and layout checks of each page the resident sees, numbered in order."""

    def __init__(self, page: Page, folder: Path, prefix: str) -> None:
        self.page = page
        self.folder = folder
        self.prefix = prefix
        self.count = 0
        self.figures: list[str] = []

    def check(self, name: str, *, ours: bool = True) -> None:
        """Screenshot the page; assert it does not scroll sideways and (ours) its targets."""
        self.count += 1
        self.page.screenshot(
            path=self.folder / f"{self.prefix}-{self.count:02d}-{name}.png", full_page=True
        )
        # On a mobile viewport Chromium widens the layout viewport (innerWidth) to fit what
        # overflows, so scrollWidth <= innerWidth always holds; the phone's width does not move.
        scroll, inner, client = self.page.evaluate(
            "() => [document.scrollingElement.scrollWidth, window.innerWidth,"
            " document.documentElement.clientWidth]"
        )
        assert client == PHONE_WIDTH, f"{name}: the page is {client} px wide, not {PHONE_WIDTH}"
        assert max(scroll, inner) <= PHONE_WIDTH, (
            f"{name}: scrolls sideways (content {scroll} px, layout viewport {inner} px "
            f"on a {PHONE_WIDTH} px phone)"
        )
        figure = f"{self.prefix} {name}: {scroll}/{PHONE_WIDTH} px wide"
        if ours:  # the sandbox cashier stands in for the provider's page, not ours to fix
            targets = self.page.evaluate(TAP_TARGETS_JS, MIN_TARGET_PX)
            assert targets["count"] > 0, f"{name}: nothing to tap?"
            assert not targets["small"], f"{name}: tap targets under {MIN_TARGET_PX} px: " + (
                "; ".join(targets["small"])
            )
            figure += f", {targets['count']} targets, inline links exempt: {targets['inline']}"
        self.figures.append(figure)
        with (self.folder / f"{self.prefix}-figures.txt").open("w") as out:
            out.write("\n".join(self.figures) + "\n")


@pytest.fixture
def phone(chromium: Browser) -> Iterator[BrowserContext]:
    """A fresh phone (no cookies, no cache) for one test."""
    context = new_phone(chromium)
    context.set_default_timeout(15_000)
    yield context
    context.close()


def _mark(page: Page) -> None:
    """Leave a mark in the page's JavaScript state: a full page load would wipe it."""
    page.evaluate("() => { window.__ranqiMark = 1; }")


def _still_marked(page: Page) -> bool:
    return bool(page.evaluate("() => window.__ranqiMark === 1"))


def _cell_texts(rows: Iterable[Any]) -> list[list[str]]:
    return [[" ".join(cell.split()) for cell in row] for row in rows]


@pytest.mark.parametrize("purchase", [ALIPAY_BY_VOLUME, WECHAT_BY_AMOUNT], ids=lambda p: p.channel)
def test_resident_buys_gas_on_a_phone(
    sandbox_site: tuple[Flask, str], phone: BrowserContext, artifacts: Path, purchase: Purchase
) -> None:
    """Look-up → buy → live tiered quote → pay at the sandbox cashier → notify → paid, with
    the gas and the kiosks; every page fits a 390 px phone and its targets fit a finger."""
    app, url = sandbox_site
    page = phone.new_page()
    steps = Steps(page, artifacts, f"phone-{purchase.channel}")
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))

    # the home page and the look-up, swapped in by htmx
    page.goto(url + "/")
    expect(page.locator("h1")).to_have_text("网上购气，就近圈存")
    steps.check("home")
    _mark(page)
    page.locator("#account_no").fill(purchase.account_no)
    page.get_by_role("button", name="查询").tap()
    account = page.locator(f"#account-{purchase.account_no}")
    expect(account).to_be_visible()
    expect(page).to_have_url(re.compile(rf"/accounts/lookup\?account_no={purchase.account_no}$"))
    assert _still_marked(page), "the look-up reloaded the page instead of swapping the result"
    expect(account.locator("dd").first).to_contain_text("*")  # the holder's name is masked
    steps.check("lookup")

    # the buy page and its live quote, swapped in by htmx while typing
    account.get_by_role("link", name="购气").first.tap()
    expect(page).to_have_url(re.compile(rf"/accounts/{purchase.account_no}/meters/[^/]+/buy$"))
    expect(page.get_by_role("radio", name="支付宝")).to_be_visible()
    expect(page.get_by_role("radio", name="微信支付")).to_be_visible()
    steps.check("buy")
    _mark(page)
    if purchase.by == "amount":
        page.get_by_role("radio", name="按金额（元）").check()
    page.locator("#quantity").fill(purchase.quantity)
    quote = page.locator("#quote table.quote")
    expect(quote.locator("tfoot .total")).to_have_text(purchase.total_amount)
    shown = _cell_texts(
        quote.locator("tbody tr").evaluate_all(
            "rows => rows.map(r => Array.from(r.cells, c => c.textContent))"
        )
    )
    assert shown == purchase.rows
    expect(quote.locator("tfoot td").first).to_have_text(purchase.total_volume)
    assert _still_marked(page), "the quote reloaded the page instead of swapping in"
    steps.check("quote")

    # confirm: off to the provider's (sandbox) cashier
    page.get_by_role(
        "radio", name={"alipay": "支付宝", "wechat": "微信支付"}[purchase.channel]
    ).check()
    page.get_by_role("button", name="确认并付款").tap()
    expect(page).to_have_url(re.compile(rf"^{url}/sandbox/{purchase.channel}/cashier"))
    expect(page.locator("body")).to_contain_text(purchase.total_amount)
    steps.check("cashier", ours=False)
    page.get_by_role("button", name="支付 Pay").tap()
    if purchase.channel == "wechat":  # WeChat's H5 page offers the way back after paying
        expect(page.locator("body")).to_contain_text("支付成功 Paid")
        steps.check("cashier-paid", ours=False)
        page.get_by_role("link", name="返回商户 Back to merchant").tap()

    # the result page waits for the notify, then shows the gas and where to load it
    expect(page).to_have_url(re.compile(rf"^{url}/orders/[0-9A-Za-z]+"))
    order_no = re.search(r"/orders/([0-9A-Za-z]+)", page.url).group(1)  # type: ignore[union-attr]
    status = page.locator("#order-status")
    expect(status.locator("h2")).to_have_text("正在等待付款结果…")
    steps.check("waiting")
    with Session(portal_db.database(app).engine) as s:
        order = s.scalar(select(Order).where(Order.order_no == order_no))
        assert order is not None and order.state == "paying"  # the redirect proves nothing
    _mark(page)
    sender = providers.sandbox_sender(app)
    assert sender is not None
    assert sender.deliver_once() == 1
    expect(status.locator("h2")).to_have_text("付款成功", timeout=POLL_TIMEOUT_MS)
    assert _still_marked(page), "the result page reloaded instead of polling its status"
    expect(status.locator(".paid")).to_contain_text(
        f"已付 {purchase.total_amount}，购气 {purchase.total_volume}"
    )
    kiosks = status.locator(".kiosks li strong")
    expect(kiosks).to_have_text(["幸福路社区服务站自助机", "市区分公司营业厅"])
    steps.check("paid")

    # the e-receipt
    status.get_by_role("link", name="电子凭证").tap()
    expect(page).to_have_url(f"{url}/orders/{order_no}/receipt")
    expect(page.locator("main")).to_contain_text(purchase.total_amount)
    steps.check("receipt")

    with Session(portal_db.database(app).engine) as s:
        paid = s.scalar(select(Order).where(Order.order_no == order_no))
        assert paid is not None and paid.state == "paid" and paid.channel == purchase.channel
        credit = s.scalar(select(Credit).where(Credit.order_id == paid.id))
        assert credit is not None and credit.state == "awaiting_load"
        verified = s.scalars(select(PaymentEvent.outcome).where(PaymentEvent.verified)).all()
        assert verified == ["paid"]
        assert ledger.check(s) == []
    assert errors == [], f"JavaScript errors: {errors}"


class GzipFront:
    """A compressing front before the WSGI app, as nginx's ``gzip on`` would be.

    The app itself sends everything uncompressed (Werkzeug and gunicorn do not compress):
    61,790 B for this first load when measured, over the budget. The budget is for what
    crosses the network compressed, so the test puts this front in; production needs one
    too (a proxy's gzip, or compression in the app).
    """

    TYPES = ("text/", "application/javascript", "application/json", "image/svg+xml")

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        captured: dict[str, Any] = {}

        def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            captured["status"], captured["headers"] = status, headers
            return lambda data: None

        result = self.app(environ, capture)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
        kind = next((v for k, v in headers if k.lower() == "content-type"), "")
        accepts = "gzip" in environ.get("HTTP_ACCEPT_ENCODING", "")
        if accepts and body and kind.startswith(self.TYPES):
            body = gzip.compress(body, compresslevel=6, mtime=0)
            headers.append(("Content-Encoding", "gzip"))
            headers.append(("Vary", "Accept-Encoding"))
        headers.append(("Content-Length", str(len(body))))
        start_response(captured["status"], headers)
        return [body]


FIRST_LOAD_JS = """
() => {
  const entries = [...performance.getEntriesByType('navigation'),
                   ...performance.getEntriesByType('resource')];
  return entries.map(e => [e.name, e.encodedBodySize, e.decodedBodySize]);
}
"""


def _first_load(context: BrowserContext, url: str) -> tuple[int, int, list[str]]:
    """Encoded and decoded bytes of everything the home page loads on a first visit."""
    page = context.new_page()
    page.goto(url + "/", wait_until="load")
    expect(page.locator("#account_no")).to_be_visible()
    page.wait_for_function("() => window.htmx !== undefined")
    entries = page.evaluate(FIRST_LOAD_JS)
    page.close()
    encoded = sum(int(e[1]) for e in entries)
    decoded = sum(int(e[2]) for e in entries)
    return encoded, decoded, [f"{e[0].removeprefix(url)} {e[1]}/{e[2]} B" for e in entries]


def test_home_page_first_load_fits_the_budget(
    chromium: Browser, fresh_engine: Engine, tmp_path: Path, artifacts: Path
) -> None:
    """The home page's first load (HTML, CSS, htmx, icon) is at most 60 KB compressed, as
    the phone's browser measures it (encoded body sizes from the Resource Timing API);
    the page, its stylesheet and htmx all arrive. Both figures, compressed and as the app
    sends it alone, go to test-artifacts/home-first-load.txt."""
    app = create_app(
        {
            "DATABASE_URL": fresh_engine.url.render_as_string(hide_password=False),
            "PAYMENTS": "none",
            "INSTANCE_PATH": tmp_path,
        }
    )
    with Session(fresh_engine) as s:
        demo.load(s)
        s.commit()
    try:
        with serve(GzipFront(app), port=free_port()) as url:
            context = new_phone(chromium)
            try:
                encoded, decoded, lines = _first_load(context, url)
            finally:
                context.close()
        with serve(app, port=free_port()) as url:  # for the record: the app on its own
            context = new_phone(chromium)
            try:
                plain, _decoded, plain_lines = _first_load(context, url)
            finally:
                context.close()
    finally:
        portal_db.database(app).engine.dispose()
    (artifacts / "home-first-load.txt").write_text(
        f"gzip front: {encoded} B encoded, {decoded} B decoded: {lines}\n"
        f"app alone (no compression): {plain} B: {plain_lines}\n"
        f"budget: {HOME_BUDGET_BYTES} B compressed\n"
    )
    names = " ".join(lines)
    for needed in ("/static/css/app.css", "/static/vendor/htmx.min.js"):
        assert needed in names, f"{needed} was not loaded: {lines}"
    assert decoded > encoded, f"nothing arrived compressed: {lines}"
    assert encoded <= HOME_BUDGET_BYTES, (
        f"home page first load {encoded} B compressed > {HOME_BUDGET_BYTES} B: {lines}"
    )
