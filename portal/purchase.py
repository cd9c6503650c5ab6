"""Buying gas: the buy page with its live quote, placing the order and starting the payment,
the result page that waits for the provider's notify, and the e-receipt.

Anyone may pay for an account (people pay for their parents): no second factor here, and
nothing personal beyond the masked holder. The price charged is the price shown: the form
carries the quoted amount, and a fresh quote that differs is shown again, never charged.

Inside WeChat, WeChat Pay starts by JSAPI when the app can get the payer's openid
(:mod:`portal.wechat_oauth`): the order goes to its WeChat pay page, which asks WeChat's
web OAuth for the openid once per browser session, prepays, and calls WeixinJSBridge.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext
from jinja2_fragments.flask import render_block
from sqlalchemy import or_, select

from models.accounts import Meter
from models.base import utcnow
from models.errors import DomainError, NotFound, QuoteError
from models.lookup import AccountSummary, find_account
from models.ordering import create_order
from models.orders import Order
from models.quotes import Quote, find_meter, quote
from models.staff import Kiosk
from models.states import OrderState
from models.tariffs import Tariff
from payments.base import PaymentRequest, PayScene
from portal import db, limits, wechat_oauth
from portal import format as fmt
from portal.callbacks import PROVIDER_PATHS, providers

log = logging.getLogger(__name__)

bp = Blueprint("purchase", __name__)
# sandbox mode: WeChat's OAuth and WeixinJSBridge stand-in at /sandbox/weixin (JSAPI)
bp.record_once(wechat_oauth.mount_sandbox)

#: orders whose money has arrived (a receipt exists for them)
PAID_STATES = frozenset({OrderState.paid, OrderState.refunding, OrderState.refunded})
#: orders still waiting for the provider
PENDING_STATES = frozenset({OrderState.created, OrderState.paying})
#: the result page stops polling this long after an unpaid order expired (a late notify
#: still counts; the expiry job closes the order at the provider)
POLL_GRACE = dt.timedelta(minutes=2)

#: a quantity as residents type it: up to 7 digits and 2 decimals ("20", "20.5", "99.50")
QUANTITY_RE = re.compile(r"([0-9]{1,7})(?:\.([0-9]{0,2}))?")
#: the per-quote key that makes a resubmitted form land on the same order
ORDER_KEY_RE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def wants_fragment() -> bool:
    """An htmx request that swaps part of a page (a history restore needs the whole page)."""
    return (
        request.headers.get("HX-Request") == "true"
        and request.headers.get("HX-History-Restore-Request") != "true"
    )


def no_store(response: Response) -> Response:
    """Pages with account or order data: never cached, and they vary on htmx."""
    response.headers["Cache-Control"] = "no-store"
    response.vary.add("HX-Request")
    return response


def message_page(message: str, status: int, *, retry_after: int | None = None) -> Response:
    """A problem in plain words: the message for htmx (configured to swap 4xx answers that
    carry one), else a whole page. ``retry_after`` (seconds) goes into the header.
    """
    context = {"message": message, "branch": None}
    body = (
        render_block("message.html", "message", **context)
        if wants_fragment()
        else render_template("message.html", **context)
    )
    response = make_response(body, status)
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return no_store(response)


def too_many_requests(name: str, key: str) -> Response:
    """The 429 answer for limit ``name`` on ``key``: try again in so many minutes."""
    seconds = limits.retry_after(name, key)
    return message_page(rate_limit_message(seconds), 429, retry_after=seconds)


def rate_limit_message(seconds: int) -> str:
    """ "Too many tries" in plain words, with the minutes to wait."""
    minutes = max(1, -(-seconds // 60))
    return str(gettext("操作太频繁，请 %(minutes)s 分钟后再试。", minutes=minutes))


# --- channel choice --------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentOption:
    """A way to pay offered on this device: a provider and how it starts."""

    channel: str
    scene: PayScene


def payment_options(
    user_agent: str, registered: set[str] | frozenset[str], *, jsapi: bool = False
) -> list[PaymentOption]:
    """The ways to pay that fit where the page is open, among the registered providers.

    Inside Alipay: Alipay (WAP). Inside WeChat: WeChat Pay by JSAPI when ``jsapi`` (this
    app can get the payer's openid by WeChat's web OAuth: :mod:`portal.wechat_oauth`),
    else H5. Elsewhere: Alipay (WAP) and WeChat Pay (H5).
    """
    if "AlipayClient" in user_agent:
        wanted = [PaymentOption("alipay", PayScene.wap)]
    elif "MicroMessenger" in user_agent:
        wanted = [PaymentOption("wechat", PayScene.jsapi if jsapi else PayScene.h5)]
    else:
        wanted = [PaymentOption("alipay", PayScene.wap), PaymentOption("wechat", PayScene.h5)]
    return [option for option in wanted if option.channel in registered]


def options_here() -> list[PaymentOption]:
    """The payment options for this request's device."""
    user_agent = request.headers.get("User-Agent", "")
    jsapi = "MicroMessenger" in user_agent and wechat_oauth.available()
    return payment_options(user_agent, frozenset(providers()), jsapi=jsapi)


# --- the quantity typed ----------------------------------------------------------------


class InputProblem(Exception):
    """What the resident typed cannot be read; the message says how to write it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def parse_quantity(by: str, raw: str) -> tuple[int | None, int | None]:
    """Volume (0.01 m³) or amount (fen) from the form; raises :class:`InputProblem`."""
    text = "".join(unicodedata.normalize("NFKC", raw).split()).removesuffix("元")
    text = text.removesuffix("m³").removesuffix("m3").removeprefix("¥")
    if not text:
        raise InputProblem(gettext("请输入购气量或金额。"))
    match = QUANTITY_RE.fullmatch(text)
    if match is None:
        if by == "amount":
            raise InputProblem(gettext("金额请填写数字，最多两位小数，如 100 或 99.50。"))
        raise InputProblem(gettext("购气量请填写数字，最多两位小数，如 20 或 20.5。"))
    units = int(match.group(1)) * 100 + int((match.group(2) or "").ljust(2, "0"))
    if units == 0:
        raise InputProblem(gettext("请输入大于零的数。"))
    return (None, units) if by == "amount" else (units, None)


def quote_problem(error: DomainError) -> str:
    """A refused quote in plain words, by its code, in the reader's language."""
    detail = error.detail
    if error.code == "below_minimum":
        return str(gettext("每次最少购气 %(volume)s。", volume=fmt.volume(detail["min_purchase"])))
    if error.code == "above_maximum":
        return str(gettext("每次最多购气 %(volume)s。", volume=fmt.volume(detail["max_purchase"])))
    if error.code == "over_capacity":
        return str(
            gettext(
                "这块燃气表现在最多还能买 %(volume)s："
                "表内充值上限减去表内余气和已付款待写卡的气量。",
                volume=fmt.volume(max(detail["room"], 0)),
            )
        )
    if error.code == "amount_too_small":
        return str(
            gettext(
                "金额不够最低购气量 %(volume)s，至少需要 %(amount)s。",
                volume=fmt.volume(detail["min_purchase"]),
                amount=fmt.yuan(detail["min_amount"]),
            )
        )
    if error.code == "amount_too_large":
        return str(
            gettext(
                "金额超过上限：最多可买 %(volume)s，共 %(amount)s。",
                volume=fmt.volume(detail["largest_volume"]),
                amount=fmt.yuan(detail["largest_amount"]),
            )
        )
    if error.code == "meter_inactive":
        return str(gettext("这块燃气表已停用，不能购气。请拨打客服热线。"))
    if error.code in {"no_tariff", "tariff_invalid"}:
        return str(gettext("暂时无法为这块燃气表计价，请拨打客服热线。"))
    return str(gettext("暂时无法报价，请稍后再试或拨打客服热线。"))


# --- the buy page ----------------------------------------------------------------------


def _meter_or_404(account_no: str, meter_no: str) -> tuple[Meter, AccountSummary]:
    session = db.session()
    try:
        meter = find_meter(session, account_no, meter_no)
    except NotFound:
        abort(404)
    summary = find_account(session, account_no)
    if summary is None:  # pragma: no cover - find_meter found the account
        abort(404)
    return meter, summary


@dataclass
class BuyForm:
    """The buy form as typed, with its fresh quote or the problem with it."""

    by: str = "volume"
    quantity: str = ""
    channel: str = ""
    quote: Quote | None = None
    problem: str = ""
    #: the page asks to confirm again: the price changed, or it was never shown
    confirm_again: str = ""
    order_key: str = ""


def _read_form(meter: Meter, values: Any) -> BuyForm:
    """Read by/quantity (and channel) from ``values`` and quote them afresh."""
    form = BuyForm(
        by="amount" if values.get("by") == "amount" else "volume",
        quantity=str(values.get("quantity", ""))[:20],
        channel=str(values.get("channel", "")),
    )
    if not form.quantity.strip():
        return form
    try:
        volume, amount = parse_quantity(form.by, form.quantity)
        form.quote = quote(db.session(), meter=meter, volume=volume, amount=amount, at=utcnow())
    except InputProblem as problem:
        form.problem = problem.message
    except QuoteError as error:
        form.problem = quote_problem(error)
    if form.quote is not None:
        form.order_key = secrets.token_urlsafe(18)
    return form


def _buy_context(meter: Meter, summary: AccountSummary, form: BuyForm) -> dict[str, Any]:
    options = options_here()
    chosen = form.channel if form.channel in {o.channel for o in options} else ""
    return {
        "account": summary,
        "meter": meter,
        "form": form,
        "options": options,
        "chosen_channel": chosen or (options[0].channel if options else ""),
        "branch": meter.account.branch,
    }


@bp.get("/accounts/<account_no>/meters/<meter_no>/buy")
def buy(account_no: str, meter_no: str) -> Response:
    """The buy page: volume or amount, the live quote, how to pay; htmx gets the quote."""
    client = limits.client_address()
    name = "quote" if wants_fragment() else "lookup"
    if not limits.allow(name, client):
        return too_many_requests(name, client)
    meter, summary = _meter_or_404(account_no, meter_no)
    form = _read_form(meter, request.args)
    context = _buy_context(meter, summary, form)
    if wants_fragment():
        return no_store(make_response(render_block("buy.html", "quote", **context)))
    status = 422 if form.problem else 200
    return no_store(make_response(render_template("buy.html", **context), status))


def _tariff_id(quoted: Quote) -> int:
    tariff_id = db.session().scalar(select(Tariff.id).where(Tariff.code == quoted.tariff_code))
    if tariff_id is None:  # pragma: no cover - the quote came from this tariff
        raise DomainError(f"no tariff {quoted.tariff_code}", code="no_tariff")
    return tariff_id


def _quoted(values: Any, name: str) -> int | None:
    raw = str(values.get(name, ""))
    return int(raw) if raw.isascii() and raw.isdigit() and len(raw) < 12 else None


def _again(meter: Meter, summary: AccountSummary, form: BuyForm, status: int) -> Response:
    page = render_template("buy.html", **_buy_context(meter, summary, form))
    return no_store(make_response(page, status))


@bp.post("/accounts/<account_no>/meters/<meter_no>/orders")
def place_order(account_no: str, meter_no: str) -> Response:
    """Re-quote, create the order at the price shown and send the payer to the provider."""
    client = limits.client_address()
    if not limits.allow("order", client):
        return too_many_requests("order", client)
    meter, summary = _meter_or_404(account_no, meter_no)
    form = _read_form(meter, request.form)
    if form.quote is None:
        if not form.problem:
            form.problem = str(gettext("请输入购气量或金额。"))
        return _again(meter, summary, form, 422)
    options = {o.channel: o for o in options_here()}
    if not options:
        form.problem = str(gettext("暂时无法在线付款，请到营业厅购气或拨打客服热线。"))
        return _again(meter, summary, form, 503)
    option = options.get(form.channel)
    quoted_amount = _quoted(request.form, "quoted_amount")
    quoted_volume = _quoted(request.form, "quoted_volume")
    fresh = form.quote
    if quoted_amount is None or quoted_volume is None:
        form.confirm_again = "unseen"
        return _again(meter, summary, form, 200)
    if (quoted_amount, quoted_volume) != (fresh.amount, fresh.volume):
        form.confirm_again = "changed"
        return _again(meter, summary, form, 409)
    if option is None:
        form.problem = str(gettext("请选择付款方式。"))
        return _again(meter, summary, form, 422)

    key = str(request.form.get("order_key", ""))
    session = db.session()
    now = utcnow()
    ttl = int(current_app.config.get("ORDER_TTL_SECONDS", 900))
    try:
        order = create_order(
            session,
            meter=meter,
            tariff_id=_tariff_id(fresh),
            volume=fresh.volume,
            amount=fresh.amount,
            quote=fresh.as_dict(),
            channel=option.channel,
            now=now,
            ttl=dt.timedelta(seconds=ttl),
            idempotency_key=f"web-{key}" if ORDER_KEY_RE.fullmatch(key) else None,
        )
    except DomainError as error:  # the same form sent again for something else
        log.info("buy form refused: %s", error.code)
        form.confirm_again = "changed"
        return _again(meter, summary, form, 409)
    session.commit()
    if OrderState(order.state) not in PENDING_STATES:
        return make_response(
            redirect(url_for("public.purchase.order_result", order_no=order.order_no), 303)
        )
    if option.scene is PayScene.jsapi:  # the pay page gets the payer's openid first
        return make_response(
            redirect(url_for("public.purchase.wechat_pay", order_no=order.order_no), 303)
        )
    return start_payment(order, option.scene, form=form, summary=summary)


def payment_subject(account_no: str, volume: int) -> str:
    """What the payer sees at the provider: "燃气费 户号10000001 100.00立方米".

    立方米, not m³: Alipay's bills are GBK, which has no "³" (it would print as "?").
    """
    whole, hundredths = divmod(volume, 100)
    return f"燃气费 户号{account_no} {whole}.{hundredths:02d}立方米"


def payment_request(
    order: Order, scene: PayScene, *, payer_openid: str | None = None
) -> PaymentRequest:
    """What the provider needs to start paying for ``order`` from this request's device.

    ``payer_openid``: the payer's openid under the payment's appid (WeChat JSAPI only).
    """
    path = next(p for p, name in PROVIDER_PATHS.items() if name == order.channel)
    return PaymentRequest(
        order_no=order.order_no,
        amount=order.amount,
        subject=payment_subject(order.account.account_no, order.volume),
        scene=scene,
        notify_url=url_for("callbacks.notify", path=path, _external=True),
        return_url=url_for("public.purchase.order_result", order_no=order.order_no, _external=True),
        expires_at=order.expires_at,
        payer_openid=payer_openid,
        client_ip=request.remote_addr or "127.0.0.1",
    )


def start_payment(
    order: Order, scene: PayScene, *, form: BuyForm, summary: AccountSummary
) -> Response:
    """Ask the provider to start paying; redirect the payer there, or say it failed."""
    provider = providers()[order.channel]
    payment = payment_request(order, scene)
    try:
        start = provider.create_payment(payment)
    except Exception:  # any adapter failure: the order stays created, the expiry job closes it
        log.exception("%s could not start paying %s", order.channel, order.order_no)
        start = None
    if start is None or not start.redirect_url:
        if start is not None:
            log.error("%s gave no redirect for %s (scene %s)", order.channel, order.order_no, scene)
        form.problem = str(
            gettext(
                "支付渠道暂时无法使用，请稍后重试或换一种付款方式。"
                "订单 %(order_no)s 未付款，会自动关闭。",
                order_no=order.order_no,
            )
        )
        meter = order.meter
        return _again(meter, summary, form, 502)
    if order.state == OrderState.created.value:
        order.transition_to(OrderState.paying)
        db.session().commit()
    return make_response(redirect(start.redirect_url, 303))


# --- WeChat Pay inside WeChat (JSAPI) -------------------------------------------------

#: the channel that pays by JSAPI inside WeChat (WeChat Pay API v3)
JSAPI_CHANNEL = "wechat"


def _oauth_redirect_uri() -> str:
    return url_for("public.purchase.wechat_oauth_callback", _external=True)


@bp.get("/orders/<order_no>/wechat-pay")
def wechat_pay(order_no: str) -> Response:
    """Pay inside WeChat: the payer's openid (WeChat OAuth, once per browser session), then
    the JSAPI prepay and a page that calls WeixinJSBridge (in the sandbox: its stand-in).
    """
    client = limits.client_address()
    if not limits.allow("lookup", client):
        return too_many_requests("lookup", client)
    order, summary = _order_or_404(order_no)
    context = _order_context(order, summary)
    result_path = url_for("public.purchase.order_result", order_no=order.order_no)
    if order.channel != JSAPI_CHANNEL or not context["pending"]:
        return no_store(make_response(redirect(result_path, 303)))
    settings = wechat_oauth.settings()
    provider = providers().get(order.channel)
    if settings is None or provider is None:
        return message_page(
            gettext(
                "暂时无法在微信内付款。订单 %(order_no)s 未付款，会自动关闭。", order_no=order_no
            ),
            503,
        )
    openid = wechat_oauth.session_openid(settings)
    if openid is None:
        here = url_for("public.purchase.wechat_pay", order_no=order.order_no)
        authorize_url = wechat_oauth.begin(settings, _oauth_redirect_uri(), here)
        return no_store(make_response(redirect(authorize_url, 302)))
    payment = payment_request(order, PayScene.jsapi, payer_openid=openid)
    try:
        start = provider.create_payment(payment)
    except Exception:  # any adapter failure: the order stays created, the expiry job closes it
        log.exception("%s could not start paying %s by JSAPI", order.channel, order.order_no)
        start = None
    if start is None or not start.jsapi_params:
        # an openid WeChat Pay does not take would fail every retry: ask WeChat again next time
        wechat_oauth.forget_openid()
        return message_page(
            gettext(
                "支付渠道暂时无法使用，请稍后重试或换一种付款方式。"
                "订单 %(order_no)s 未付款，会自动关闭。",
                order_no=order.order_no,
            ),
            502,
        )
    if order.state == OrderState.created.value:
        order.transition_to(OrderState.paying)
        db.session().commit()
    result_url = url_for("public.purchase.order_result", order_no=order.order_no, _external=True)
    context["jsapi"] = {
        "params": start.jsapi_params,
        "standin_url": wechat_oauth.jsapi_standin_url(settings, start.jsapi_params, result_url),
        "result_url": result_path,
    }
    return no_store(make_response(render_template("order.html", **context)))


@bp.get("/wechat/oauth")
def wechat_oauth_callback() -> Response:
    """Where WeChat's web OAuth comes back: check the state, keep the openid, go on paying."""
    client = limits.client_address()
    if not limits.allow("lookup", client):
        return too_many_requests("lookup", client)
    settings = wechat_oauth.settings()
    if settings is None:
        abort(404)
    try:
        _openid, next_path = wechat_oauth.finish(settings, _oauth_redirect_uri(), request.args)
    except wechat_oauth.OAuthProblem as problem:
        if problem.code == "denied":
            message = gettext(
                "没有获得微信授权，无法在微信内付款。未付款的订单会自动关闭，不会扣款。"
            )
            return message_page(message, 403)
        if problem.code == "exchange":
            message = gettext("暂时无法从微信获取付款人信息，请返回订单页重试。")
            return message_page(message, 502)
        message = gettext("授权链接已失效或不属于本次付款，请返回订单页重新付款。")
        return message_page(message, 400)
    return no_store(make_response(redirect(next_path, 303)))


# --- the result page and the receipt ---------------------------------------------------


def _order_or_404(order_no: str) -> tuple[Order, AccountSummary]:
    if len(order_no) > 32:
        abort(404)
    session = db.session()
    order = session.scalar(select(Order).where(Order.order_no == order_no))
    if order is None:
        abort(404)
    summary = find_account(session, order.account.account_no)
    if summary is None:  # pragma: no cover - the order's account exists
        abort(404)
    return order, summary


def kiosks_for(branch_id: int) -> list[Kiosk]:
    """Where to load gas: the enabled kiosks of the account's branch (and shared ones)."""
    return list(
        db.session().scalars(
            select(Kiosk)
            .where(
                Kiosk.enabled.is_(True),
                or_(Kiosk.branch_id == branch_id, Kiosk.branch_id.is_(None)),
            )
            .order_by(Kiosk.id)
        )
    )


def _order_context(order: Order, summary: AccountSummary) -> dict[str, Any]:
    state = OrderState(order.state)
    pending = state in PENDING_STATES
    overdue = pending and order.expires_at is not None and utcnow() > order.expires_at + POLL_GRACE
    return {
        "order": order,
        "account": summary,
        "meter_no": order.meter.meter_no,
        "pending": pending and not overdue,
        "overdue": overdue,
        "paid": state in PAID_STATES,
        "kiosks": kiosks_for(summary.branch_id) if state in PAID_STATES else [],
        "parts": order.quote.get("parts", []) if isinstance(order.quote, dict) else [],
        "branch": order.account.branch,
        #: the JSAPI pay step (see wechat_pay): params, stand-in link; None elsewhere
        "jsapi": None,
    }


@bp.get("/orders/<order_no>")
def order_result(order_no: str) -> Response:
    """Where the payer lands after paying: waits for the notify, then says what to do next."""
    order, summary = _order_or_404(order_no)
    context = _order_context(order, summary)
    if wants_fragment():
        return no_store(make_response(render_block("order.html", "status", **context)))
    return no_store(make_response(render_template("order.html", **context)))


@bp.get("/orders/<order_no>/receipt")
def receipt(order_no: str) -> Response:
    """The e-receipt of a paid order, printable; 404 until the money has arrived."""
    order, summary = _order_or_404(order_no)
    if OrderState(order.state) not in PAID_STATES:
        abort(404)
    return no_store(
        make_response(render_template("receipt.html", **_order_context(order, summary)))
    )
