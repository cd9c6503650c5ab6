"""The kiosk's local touch UI: a Flask app on 127.0.0.1 for the kiosk's full-screen browser.

Screens: "请刷卡 Tap your card" (a waiting partial that polls itself until a tap
result appears), the tap result (account, meter, gas loaded now, gas on the card,
the meter's last report, or the error in plain words), and "Buy gas here" after a
tap: choose a volume or an amount and a channel, the server creates the order and
the provider's QR code (``POST /kiosk/api/v1/orders``), the screen shows it and
polls the order until it is paid, then asks for the card again.

The reader runs in a :class:`TapWorker` thread beside the app: one
:meth:`kiosk.client.Kiosk.tap` after another, each outcome recorded on the
:class:`Screen` the pages read. Receipts go to the configured printer.

Texts come from a small dict catalog (:data:`TEXTS`), Chinese first with an English
toggle: this is a separate program with a few dozen strings, and a dict keeps it
free of the portal's Babel extraction and compiled catalogs.

The kiosk holds no key that can create gas: it shows what the server sends.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import segno
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    redirect,
    render_template,
    request,
    send_file,
    url_for,
)
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse

from kiosk import receipt
from kiosk.client import (
    API_PREFIX,
    CONNECT_TIMEOUT,
    Kiosk,
    KioskApiError,
    KioskClient,
    Outcome,
    ServerUnreachable,
    TapOutcome,
    _json,
    _raise_for_error,
)
from kiosk.config import KioskConfig

log = logging.getLogger(__name__)

LANGS = ("zh", "en")
#: the portal's htmx, served from the checkout (never a committed copy)
HTMX_PATH = Path(__file__).resolve().parent.parent / "static" / "vendor" / "htmx.min.js"
#: walk-up purchase presets: volumes in 0.01 m³, amounts in fen
VOLUME_PRESETS = (1000, 2000, 5000, 10000)
AMOUNT_PRESETS = (5000, 10000, 20000)
CHANNELS = ("alipay", "wechat")
#: seconds a tap result stays on the screen before "请刷卡" comes back
RESULT_SECONDS = 60.0

#: the screen's texts: key → (Chinese, English)
TEXTS: dict[str, tuple[str, str]] = {
    "title": ("燃气自助圈存", "Gas card kiosk"),
    "tap": ("请刷卡", "Tap your card"),
    "tap_hint": (
        "把燃气卡平放在读卡区，听到提示前请勿移开。",
        "Hold your gas card flat on the reader until the screen changes.",
    ),
    "switch": ("English", "中文"),
    "account": ("户号", "Account"),
    "meter": ("表号", "Meter"),
    "card": ("卡号", "Card"),
    "loaded_now": ("本次写卡", "Loaded now"),
    "on_card": ("卡内待用气量", "On the card for the meter"),
    "purchase_count": ("购气次数", "Purchase no."),
    "meter_report": ("表具最近回报", "Last report from the meter"),
    "meter_remaining": ("表内剩余", "Left in the meter"),
    "meter_applied": ("表已用购气次数", "Purchase applied by meter"),
    "no_report": ("暂无表具回报", "No report from the meter yet"),
    "applied_now": ("本次回报已入表", "Reported applied now"),
    "alarms": ("表具报警（已通知燃气公司）", "Meter alarms (the gas company is told)"),
    "loaded": ("写卡成功", "Gas loaded"),
    "loaded_next": (
        "请将卡插入燃气表，表具自动加气。",
        "Insert the card into your meter: the gas is added.",
    ),
    "up_to_date": ("卡已是最新", "Your card is up to date"),
    "up_to_date_next": (
        "没有待写入的气量。可以在这里购气。",
        "Nothing waits to be loaded. You can buy gas here.",
    ),
    "unconfirmed": ("请再刷一次卡", "Please tap the card again"),
    "unconfirmed_next": (
        "气量已写入卡中，但服务器尚未确认。使用前请再刷一次。",
        "The gas is on your card but the server has not confirmed it yet. "
        "Tap again before using it.",
    ),
    "card_failed": ("卡片离开过早，请重新刷卡", "Card pulled too early: tap again"),
    "card_failed_next": (
        "未扣除任何气量，卡内原有数据完好。请把卡放稳。",
        "Nothing is lost and the card keeps its old state. Hold it still.",
    ),
    "refused": ("此卡不能使用", "This card is refused"),
    "busy": ("此卡正在其他终端写卡", "Card busy at another kiosk"),
    "busy_next": ("请稍候几秒再刷卡。", "Please wait a few seconds and tap again."),
    "offline": ("无法连接燃气公司服务器", "The server cannot be reached"),
    "offline_next": (
        "卡上没有写入任何内容，请稍后再试。",
        "Nothing was written to your card. Please try again later.",
    ),
    "out_of_service": ("本机暂停服务", "This kiosk is out of service"),
    "out_of_service_next": (
        "卡上没有写入任何内容。请联系燃气公司。",
        "Nothing was written to your card. Please call the gas company.",
    ),
    "code_card_lost": ("此卡已挂失。", "This card was reported lost."),
    "code_card_replaced": ("此卡已补办新卡，旧卡作废。", "This card was replaced by a new one."),
    "code_card_blacklisted": ("此卡已被列入黑名单。", "This card is blocked."),
    "code_unknown_card": ("燃气公司没有此卡的记录。", "The gas company does not know this card."),
    "code_other": ("请联系燃气公司营业厅。", "Please ask at the gas company's service hall."),
    "buy": ("在这里购气", "Buy gas here"),
    "again": ("再刷一张卡", "Tap another card"),
    "by_volume": ("按气量", "By volume"),
    "by_amount": ("按金额", "By amount"),
    "channel": ("支付方式", "Pay with"),
    "alipay": ("支付宝", "Alipay"),
    "wechat": ("微信支付", "WeChat Pay"),
    "wechat_v2": ("微信支付", "WeChat Pay"),
    "cancel": ("返回", "Back"),
    "confirm_pay": ("确认，显示付款码", "Confirm and show the QR code"),
    "scan": ("请用手机扫码付款", "Scan with your phone to pay"),
    "open_link": ("演示：打开收银台并点支付", "Demo: open the cashier and press Pay"),
    "amount": ("金额", "Amount"),
    "volume": ("气量", "Volume"),
    "tier": ("第%s阶梯", "Tier %s"),
    "order": ("订单号", "Order"),
    "waiting_payment": ("等待付款……", "Waiting for payment…"),
    "paid": ("付款成功", "Paid"),
    "paid_next": ("请再次刷卡，把气量写入卡中。", "Now tap your card again to load the gas."),
    "closed": ("订单已关闭，未扣款", "Order closed; nothing was charged"),
    "order_failed": ("无法下单", "The order could not be made"),
    "tap_first": ("请先刷卡", "Please tap your card first"),
    "no_keys": ("本机不持有任何可生成气量的密钥。", "This kiosk holds no key that can create gas."),
}


def text(key: str, lang: str) -> str:
    """The screen text ``key`` in ``lang`` (zh or en)."""
    zh, en = TEXTS[key]
    return en if lang == "en" else zh


def m3(volume: int) -> str:
    """0.01 m³ units as m³ with two decimals (integers only)."""
    return f"{volume // 100}.{volume % 100:02d}"


def yuan(fen: int) -> str:
    """Fen as yuan with two decimals (integers only)."""
    return f"{fen // 100}.{fen % 100:02d}"


@dataclass
class WalkUpOrder:
    """An order sold at this kiosk, as the screen shows it."""

    order_no: str
    amount: int
    volume: int
    channel: str
    qr_code: str
    account_no: str
    meter_no: str
    parts: list[dict[str, Any]] = field(default_factory=list)
    state: str = "paying"
    printed: bool = False


class Screen:
    """What the touch screen shows: the latest tap (numbered) and the walk-up orders."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seq = 0
        self.last: TapOutcome | None = None
        #: the last card the server knew (account and meter): what "Buy gas here" sells for
        self.card: TapOutcome | None = None
        self.orders: dict[str, WalkUpOrder] = {}
        #: when the latest tap was recorded (time.monotonic)
        self.recorded_at = 0.0

    def record(self, outcome: TapOutcome) -> int:
        """Show a new tap result; returns its number."""
        with self._lock:
            self.seq += 1
            self.last = outcome
            self.recorded_at = time.monotonic()
            if outcome.card_no:
                self.card = outcome
            return self.seq

    def latest(self) -> tuple[int, TapOutcome | None]:
        """The latest tap's number and outcome."""
        with self._lock:
            return self.seq, self.last


class SellingClient(KioskClient):
    """The kiosk API client with the walk-up calls: a quote, then the order (``/orders``)."""

    def quote(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /api/v1/quotes`` (the public quote the residents' pages use): tiers, amount."""
        # the same server, outside the kiosk API (no token needed)
        url = self.base.removesuffix(API_PREFIX) + "/api/v1/quotes"
        try:
            response = self._session().post(
                url, json=body, timeout=(CONNECT_TIMEOUT, self.timeout), allow_redirects=False
            )
        except requests.RequestException as error:
            raise ServerUnreachable(f"the server cannot be reached ({type(error).__name__})") from (
                error
            )
        if response.status_code == 200:
            return _json(response)
        _raise_for_error(response)
        raise AssertionError("unreachable")  # pragma: no cover - 200 returned above

    def create_order(self, body: dict[str, Any], idempotency_key: str) -> dict[str, Any]:
        """``POST /orders``: the order, its quote and the QR code's content."""
        response = self._send_authorised("POST", "/orders", body, idempotency_key)
        if response.status_code in (200, 201):
            return _json(response)
        _raise_for_error(response)
        raise AssertionError("unreachable")  # pragma: no cover - 200 returned above

    def get_order(self, order_no: str) -> dict[str, Any]:
        """``GET /orders/<order_no>``: its state and where its gas is."""
        response = self._call("GET", f"/orders/{order_no}")
        _raise_for_error(response)
        return _json(response)

    def _send_authorised(
        self, method: str, path: str, body: dict[str, Any], idempotency_key: str
    ) -> Any:
        for attempt in (1, 2):
            token = self.token()
            headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": idempotency_key}
            response = self._send(method, path, json=body, headers=headers)
            if response.status_code != 401 or attempt == 2:
                return response
            self._forget_token(token)
        raise AssertionError("unreachable")  # pragma: no cover


class TapWorker:
    """The reader beside the UI: serve taps until stopped, record each on the screen.

    Give it a :class:`Kiosk` made with ``await_removal=False``: the worker records the
    result first and then waits for the card to leave.
    """

    def __init__(
        self,
        kiosk: Kiosk,
        screen: Screen,
        *,
        on_tap: Callable[[TapOutcome], None] | None = None,
    ) -> None:
        self.kiosk, self.screen, self.on_tap = kiosk, screen, on_tap
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: cards known to have left the reader (the demo counts its "take away");
        #: a card put back within one sense interval would otherwise look as if it never left
        self.removals = 0

    def start(self) -> TapWorker:
        """Run in a daemon thread."""
        self.kiosk.loop.stopping = self.stopping
        self._thread = threading.Thread(target=self._run, name="kiosk-taps", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop after the current reader session."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self.stopping.is_set():
            removals = self.removals
            try:
                outcome = self.kiosk.tap()
            except Exception:
                log.exception("tap failed")  # a reader error costs this tap, not the kiosk
                self.stopping.wait(1.0)
                continue
            if outcome.outcome is Outcome.NO_CARD:
                continue
            log.info("%s", outcome.log_line())
            self.screen.record(outcome)
            if self.on_tap is not None:
                try:
                    self.on_tap(outcome)
                except Exception:
                    log.exception("after-tap step failed (receipt?)")
            if outcome.outcome is Outcome.BUSY and outcome.retry_after:
                self.stopping.wait(min(outcome.retry_after, 5.0))
            else:
                self._await_removal(outcome.uid, removals)

    def card_removed(self) -> None:
        """Say that the card left the reader (when the caller knows it, as the demo does)."""
        self.removals += 1

    def _await_removal(self, uid: str, removals: int) -> None:
        # The screen shows the result while the card still lies on the reader; the card
        # is served once per tap, so wait for it (any card, if the tap ended without a
        # UID) to leave before the next session. A bare sense, not a connect: no I/O.
        import nfc.clf  # type: ignore[import-untyped]

        while not self.stopping.is_set() and self.removals == removals:
            clf = self.kiosk.loop.open_frontend()
            try:
                target = clf.sense(nfc.clf.RemoteTarget("106A"), iterations=1)
            except Exception:  # a reader hiccup: take it as an empty field
                target = None
            finally:
                clf.close()
            if target is None or (uid and bytes(target.sdd_res).hex() != uid):
                return
            self.stopping.wait(0.2)


@dataclass
class UiContext:
    """What the UI's routes work with (kept in ``app.extensions['ranqi_kiosk_ui']``)."""

    screen: Screen
    client: SellingClient | None
    kiosk_name: str = "Ranqi kiosk"
    printer: Any = None
    #: extra links shown in the footer (the demo adds its controls)
    footer_links: list[tuple[str, str]] = field(default_factory=list)


def _ui() -> UiContext:
    from flask import current_app

    context: UiContext = current_app.extensions["ranqi_kiosk_ui"]
    return context


def _lang() -> str:
    chosen = request.args.get("lang") or request.cookies.get("lang")
    return chosen if chosen in LANGS else "zh"


def qr_svg(content: str) -> Markup:
    """The QR code of ``content`` as an inline SVG (segno escapes nothing: content is data)."""
    code = segno.make(content, error="m", micro=False)
    return Markup(code.svg_inline(scale=6, border=2, dark="#000", light="#fff"))  # noqa: S704


def print_load_receipt(context: UiContext, outcome: TapOutcome) -> None:
    """After a confirmed load, print its receipt (if a printer is configured)."""
    if context.printer is None or outcome.outcome is not Outcome.LOADED:
        return
    receipt.print_load(
        context.printer,
        receipt.LoadReceipt(
            kiosk=context.kiosk_name,
            at=dt.datetime.now(dt.UTC),
            account_no=outcome.account_no,
            meter_no=outcome.meter_no,
            card_no=outcome.card_no,
            loaded=outcome.loaded,
            purchase_count=outcome.purchase_count,
            pending_volume=outcome.pending_on_card,
        ),
    )


def _print_purchase_receipt(context: UiContext, order: WalkUpOrder) -> None:
    if context.printer is None or order.printed:
        return
    order.printed = True
    receipt.print_purchase(
        context.printer,
        receipt.PurchaseReceipt(
            kiosk=context.kiosk_name,
            at=dt.datetime.now(dt.UTC),
            order_no=order.order_no,
            account_no=order.account_no,
            meter_no=order.meter_no,
            channel=order.channel,
            amount=order.amount,
            volume=order.volume,
            parts=tuple(
                receipt.TierPart(
                    int(p["tier"]), int(p["volume"]), str(p["price"]), int(p["amount"])
                )
                for p in order.parts
            ),
        ),
    )


bp = Blueprint("kiosk_ui", __name__, template_folder="templates", static_folder="static")

#: outcome → (title key, next-step key)
OUTCOME_TEXTS: dict[Outcome, tuple[str, str]] = {
    Outcome.LOADED: ("loaded", "loaded_next"),
    Outcome.UP_TO_DATE: ("up_to_date", "up_to_date_next"),
    Outcome.UNCONFIRMED: ("unconfirmed", "unconfirmed_next"),
    Outcome.CARD_FAILED: ("card_failed", "card_failed_next"),
    Outcome.REFUSED: ("refused", "code_other"),
    Outcome.BUSY: ("busy", "busy_next"),
    Outcome.OFFLINE: ("offline", "offline_next"),
    Outcome.OUT_OF_SERVICE: ("out_of_service", "out_of_service_next"),
}


def _render(template: str, **values: Any) -> str:
    lang = _lang()
    return render_template(
        template,
        lang=lang,
        t=lambda key: text(key, lang),
        m3=m3,
        yuan=yuan,
        ui=_ui(),
        **values,
    )


def _page_or_partial(page: str, partial: str, **values: Any) -> Response:
    """The whole page for a browser load, the partial for htmx (Vary: HX-Request)."""
    is_htmx = request.headers.get("HX-Request") == "true"
    response = Response(_render(partial if is_htmx else page, **values))
    response.headers["Vary"] = "HX-Request"
    return response


@bp.before_app_request
def _same_origin_posts() -> None:
    # the UI listens on loopback, but any page in any browser on this machine could post
    # to it: a POST must come from the UI's own pages
    if request.method == "POST":
        origin = request.headers.get("Origin") or request.headers.get("Referer")
        if origin and urlsplit(origin).netloc != request.host:
            abort(403)


@bp.get("/")
def home() -> Response:
    """The tap screen: the latest result, or "请刷卡" polling for one."""
    seq, outcome = _ui().screen.latest()
    since = request.args.get("since", type=int)
    if since is not None and seq <= since:
        outcome = None  # the resident pressed "tap another": wait for a newer tap
    else:
        since = seq if outcome is None else seq - 1
    return _page_or_partial(
        "tap.html",
        "_tap_screen.html",
        seq=seq,
        since=since,
        outcome=outcome,
        **_outcome_values(outcome),
    )


@bp.get("/screen")
def screen() -> Response:
    """The waiting partial: itself again until a tap newer than ``since`` arrives."""
    since = request.args.get("since", 0, type=int)
    seq, outcome = _ui().screen.latest()
    if seq <= since:
        outcome = None
    return _page_or_partial(
        "tap.html",
        "_tap_screen.html",
        seq=seq,
        since=since,
        outcome=outcome,
        **_outcome_values(outcome),
    )


@bp.get("/screen/next")
def screen_next() -> Response:
    """A result screen's poll: 204 until a newer tap arrives, then that tap's screen."""
    since = request.args.get("since", 0, type=int)
    screen = _ui().screen
    seq, outcome = screen.latest()
    if seq <= since and time.monotonic() - screen.recorded_at > RESULT_SECONDS:
        # the resident has gone: back to "请刷卡" for the next one
        return _page_or_partial(
            "tap.html",
            "_tap_screen.html",
            seq=seq,
            since=seq,
            outcome=None,
            **_outcome_values(None),
        )
    if seq <= since or outcome is None:
        return Response(status=204)
    return _page_or_partial(
        "tap.html",
        "_tap_screen.html",
        seq=seq,
        since=seq - 1,
        outcome=outcome,
        **_outcome_values(outcome),
    )


def _outcome_values(outcome: TapOutcome | None) -> dict[str, Any]:
    if outcome is None:
        return {"title_key": "tap", "next_key": "tap_hint", "refusal_key": ""}
    title_key, next_key = OUTCOME_TEXTS.get(outcome.outcome, ("out_of_service", "code_other"))
    refusal_key = ""
    if outcome.outcome is Outcome.REFUSED:
        refusal_key = f"code_{outcome.code}" if f"code_{outcome.code}" in TEXTS else "code_other"
    return {"title_key": title_key, "next_key": next_key, "refusal_key": refusal_key}


@bp.get("/lang/<code>")
def set_lang(code: str) -> BaseResponse:
    """Switch the screen's language (a cookie), back to where the resident was."""
    target = request.args.get("next", "/")
    if not target.startswith("/") or target.startswith("//"):
        target = "/"
    response = redirect(target)
    if code in LANGS:
        response.set_cookie("lang", code, samesite="Strict")
    return response


@bp.get("/buy")
def buy_form() -> Response | str:
    """Buy gas for the card just tapped: presets by volume or amount, and the channel."""
    card = _ui().screen.card
    if card is None:
        return _render("message.html", title_key="tap_first", detail="")
    return _render(
        "buy.html",
        card=card,
        volumes=VOLUME_PRESETS,
        amounts=AMOUNT_PRESETS,
        channels=CHANNELS,
    )


@bp.get("/buy/quote")
def buy_quote() -> BaseResponse | str | tuple[str, int]:
    """The server's quote for the chosen volume or amount; confirm to get the QR code."""
    context = _ui()
    card = context.screen.card
    if card is None or context.client is None:
        return _render("message.html", title_key="tap_first", detail=""), 409
    channel = request.args.get("channel", "")
    body: dict[str, Any] = {"account_no": card.account_no, "meter_no": card.meter_no}
    for name in ("volume", "amount"):
        value = request.args.get(name, "")
        if value.isdigit():
            body[name] = int(value)
    if channel not in CHANNELS:
        return _render("message.html", title_key="order_failed", detail=channel), 400
    try:
        quoted = context.client.quote(body)
    except ServerUnreachable:
        return _render("message.html", title_key="offline", detail=""), 503
    except KioskApiError as error:
        return _render("message.html", title_key="order_failed", detail=error.message), 422
    chosen = {k: v for k, v in body.items() if k in ("volume", "amount")}
    return _render(
        "quote.html", card=card, quote=quoted, channel=channel, chosen=chosen, key=uuid.uuid4().hex
    )


@bp.post("/buy")
def buy() -> BaseResponse | str | tuple[str, int]:
    """Ask the server for the order and its QR code; show the code and wait for payment."""
    context = _ui()
    card = context.screen.card
    if card is None or context.client is None:
        return _render("message.html", title_key="tap_first", detail=""), 409
    body: dict[str, Any] = {"card_no": card.card_no, "channel": request.form.get("channel", "")}
    for name in ("volume", "amount"):
        value = request.form.get(name, "")
        if value.isdigit():
            body[name] = int(value)
    key = request.form.get("key", "") or uuid.uuid4().hex
    try:
        answer = context.client.create_order(body, key)
    except ServerUnreachable:
        return _render("message.html", title_key="offline", detail=""), 503
    except KioskApiError as error:
        return _render("message.html", title_key="order_failed", detail=error.message), 422
    order = WalkUpOrder(
        order_no=str(answer["order_no"]),
        amount=int(answer["amount"]),
        volume=int(answer["volume"]),
        channel=str(answer["channel"]),
        qr_code=str(answer.get("qr_code") or ""),
        account_no=card.account_no,
        meter_no=card.meter_no,
        parts=list(answer.get("quote", {}).get("parts", [])),
        state=str(answer["state"]),
    )
    context.screen.orders[order.order_no] = order
    return redirect(url_for("kiosk_ui.pay", order_no=order.order_no))


@bp.get("/buy/<order_no>")
def pay(order_no: str) -> Response:
    """The QR code of an order sold here, with the payment poll."""
    order = _ui().screen.orders.get(order_no)
    if order is None:
        abort(404)
    return _page_or_partial(
        "pay.html",
        "_pay_state.html",
        order=order,
        qr=qr_svg(order.qr_code) if order.qr_code else "",
    )


@bp.get("/buy/<order_no>/state")
def pay_state(order_no: str) -> Response:
    """The payment poll: itself again until the order is paid or closed."""
    context = _ui()
    order = context.screen.orders.get(order_no)
    if order is None or context.client is None:
        abort(404)
    try:
        order.state = str(context.client.get_order(order_no)["state"])
    except KioskApiError as error:
        log.warning("order %s: %s", order_no, error.message)  # keep polling
    if order.state == "paid":
        try:
            _print_purchase_receipt(context, order)
        except Exception:
            log.exception("purchase receipt for %s not printed", order_no)
    return _page_or_partial("pay.html", "_pay_state.html", order=order, qr="")


@bp.get("/vendor/htmx.min.js")
def htmx() -> Response:
    """The portal's htmx from the checkout (installed by ``make setup``, never committed)."""
    if not HTMX_PATH.exists():
        abort(404)
    return send_file(HTMX_PATH, mimetype="text/javascript", max_age=3600)


def create_ui(
    client: SellingClient | None,
    *,
    screen: Screen | None = None,
    kiosk_name: str = "Ranqi kiosk",
    printer: Any = None,
    blueprints: Iterable[Blueprint] = (),
    footer_links: Iterable[tuple[str, str]] = (),
) -> Flask:
    """The touch UI app; ``blueprints`` add pages (the demo's controls)."""
    app = Flask(__name__, static_folder=None)
    app.register_blueprint(bp)
    for extra in blueprints:
        app.register_blueprint(extra)
    app.extensions["ranqi_kiosk_ui"] = UiContext(
        screen=screen or Screen(),
        client=client,
        kiosk_name=kiosk_name,
        printer=printer,
        footer_links=list(footer_links),
    )
    return app


def ui_context(app: Flask) -> UiContext:
    """The UI state of ``app`` (the screen, the client, the printer)."""
    context: UiContext = app.extensions["ranqi_kiosk_ui"]
    return context


def _serve_ui(args: argparse.Namespace, config: KioskConfig) -> int:
    """Serve taps on the configured reader and the touch UI on loopback until Ctrl-C."""
    from werkzeug.serving import run_simple

    config.require_credentials()
    client = SellingClient(
        config.server_url, config.client_id, config.client_secret, timeout=config.timeout
    )
    kiosk = Kiosk(client, config.reader_opener(), wait=config.card_wait)
    name = config.client_id
    try:
        name = str(client.whoami().get("name") or name)
    except KioskApiError as error:
        log.warning("whoami failed: %s", error.message)
    printer = receipt.open_printer(config.printer)
    app = create_ui(client, kiosk_name=name, printer=printer)
    context = ui_context(app)
    worker = TapWorker(kiosk, context.screen, on_tap=lambda o: print_load_receipt(context, o))
    worker.start()
    try:
        run_simple(config.ui_host, config.ui_port, app, threaded=True)
    finally:
        worker.stop()
        client.close()
    return 0


def _kiosk_commands() -> dict[str, Any]:
    from kiosk.__main__ import Command

    return {"ui": Command("serve taps and the touch UI on loopback until Ctrl-C", _serve_ui)}


#: subcommands for ``ranqi-kiosk`` (kiosk/__main__.py picks these up)
KIOSK_COMMANDS = _kiosk_commands()
