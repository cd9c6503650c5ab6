"""Residents' pages: home, account look-up with its second factor, public information
(条例 art. 17); buying gas is in :mod:`portal.purchase`, nested in this blueprint.

Look-ups are rate-limited per client against enumeration; the second factor (the last four
digits of the registered phone) unlocks the account's details and history for
``SECOND_FACTOR_SECONDS`` in this browser's signed session, and wrong attempts are
limited per account, whoever makes them.
"""

from __future__ import annotations

import time
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from flask import session as browser_session
from flask.blueprints import BlueprintSetupState
from flask_babel import get_locale, gettext, refresh
from jinja2_fragments.flask import render_block

from models.base import utcnow
from models.clock import local_date
from models.history import account_details
from models.lookup import (
    AccountSummary,
    find_account,
    first_branch,
    list_branches,
    normalise_account_no,
    normalise_last_four,
    second_factor_matches,
    service_notices,
)
from models.org import Branch
from models.tariffs import tariffs_in_force
from portal import SUPPORTED_LOCALES, csrf, limits, purchase
from portal import format as fmt
from portal.db import session
from portal.purchase import message_page, no_store, rate_limit_message, wants_fragment

bp = Blueprint("public", __name__)
bp.register_blueprint(purchase.bp)

#: how long the language chosen with ?lang= is remembered
LANG_COOKIE_MAX_AGE = 365 * 24 * 60 * 60
#: where the browser's session remembers verified accounts: 户号 → expiry (Unix seconds)
VERIFIED_KEY = "verified"
#: at most this many verified accounts are remembered per browser
VERIFIED_MAX = 5


@bp.record_once
def _register_filters(state: BlueprintSetupState) -> None:
    """Make the display helpers Jinja filters, for every template of the app."""
    state.app.jinja_env.filters.update(
        yuan=fmt.yuan,
        volume=fmt.volume,
        volume_number=fmt.volume_number,
        price=fmt.price,
        notice_blocks=fmt.notice_blocks,
        tier_ranges=fmt.tier_ranges,
        cycle_start=fmt.cycle_start,
        discount=fmt.discount_description,
        meter_kind=fmt.meter_kind_label,
        meter_status=fmt.meter_status_label,
        tel_href=fmt.tel_href,
        local_time=fmt.local_time,
        channel=fmt.channel_label,
        order_state=fmt.order_state_label,
        credit_state=fmt.credit_state_label,
        alarm=fmt.alarm_label,
    )
    state.app.jinja_env.globals.update(csrf_token=csrf.csrf_token)


def current_lang() -> str:
    """The locale this response is in: "zh" or "en"."""
    return str(get_locale() or "zh")


def _url_in_lang(lang: str) -> str:
    """This page (with its query) in another language."""
    args: dict[str, Any] = {**(request.view_args or {}), **request.args.to_dict()}
    args["lang"] = lang
    return url_for(request.endpoint or "public.home", **args)


@bp.context_processor
def _page_context() -> dict[str, Any]:
    """What every page of the blueprint needs: its language and links to the other one."""
    lang = current_lang()
    return {
        "lang": lang,
        "html_lang": "zh-CN" if lang == "zh" else "en",
        "url_in_lang": _url_in_lang,
    }


@bp.before_request
def _choose_language() -> None:
    """Choose the locale afresh for this request.

    Flask-Babel caches it on ``g``, which lives as long as the app context; a request
    run inside a longer one (the tests' shared context) must not inherit another's choice.
    """
    refresh()


@bp.before_request
def _check_csrf() -> Response | None:
    """Refuse a POST that does not carry this session's CSRF token."""
    if request.method == "POST" and not csrf.token_is_valid():
        return message_page(str(gettext("页面已过期，请刷新页面后重试。")), 403)
    return None


@bp.after_request
def _remember_language(response: Response) -> Response:
    """Keep a language chosen with ?lang= in a cookie; say what the page varies on."""
    chosen = request.args.get("lang")
    if chosen in SUPPORTED_LOCALES:
        response.set_cookie(
            "lang",
            chosen,
            max_age=LANG_COOKIE_MAX_AGE,
            samesite="Lax",
            secure=request.is_secure,
            httponly=True,
        )
    response.vary.update(("Cookie", "Accept-Language", "HX-Request"))
    return response


def _wants_fragment() -> bool:
    """An htmx request that swaps part of a page (a history restore needs the whole page)."""
    return wants_fragment()


# --- the second factor -----------------------------------------------------------------


def is_verified(account_no: str) -> bool:
    """Whether this browser passed the second factor for the account, and recently enough."""
    verified = browser_session.get(VERIFIED_KEY)
    if not isinstance(verified, dict):
        return False
    expires = verified.get(account_no)
    return isinstance(expires, int) and expires > time.time()


def remember_verified(account_no: str) -> None:
    """Remember in the signed session cookie that this browser passed the second factor."""
    now = int(time.time())
    seconds = int(current_app.config.get("SECOND_FACTOR_SECONDS", 30 * 60))
    stored = browser_session.get(VERIFIED_KEY)
    verified = {
        no: expires
        for no, expires in (stored.items() if isinstance(stored, dict) else [])
        if isinstance(expires, int) and expires > now and no != account_no
    }
    verified[account_no] = now + seconds
    newest = sorted(verified.items(), key=lambda item: item[1])[-VERIFIED_MAX:]
    browser_session[VERIFIED_KEY] = dict(newest)


def _account_context(account: AccountSummary, **extra: Any) -> dict[str, Any]:
    """What _account.html needs: the masked account and, once verified, its details."""
    verified = is_verified(account.account_no)
    return {
        "account": account,
        "verified": verified,
        "details": account_details(session(), account.account_no, at=utcnow())
        if verified
        else None,
        "second_factor_problem": "",
        "ask_second_factor": False,
        **extra,
    }


@bp.get("/")
def home() -> str:
    """What Ranqi is, and the account look-up form."""
    return render_template("home.html", branch=first_branch(session()), account_no="")


@bp.get("/accounts/lookup")
def lookup() -> Response:
    """Look an account up by 户号: masked holder and address, category, meters.

    htmx gets the result block, always with 200 so that htmx swaps it in; a plain load gets
    the home page with the result: 400 for a blank or malformed 户号, 404 for an unknown one.
    """
    raw = request.args.get("account_no", "")
    client = limits.client_address()
    if not limits.allow("lookup", client):
        return _lookup_limited(raw, client)
    account_no = normalise_account_no(raw)
    account = None
    branch = None
    if not raw.strip():
        problem, status = "blank", 400
    elif account_no is None:
        problem, status = "malformed", 400
    else:
        account = find_account(session(), account_no)
        if account is None:
            problem, status = "not_found", 404
        else:
            problem, status = "", 200
            branch = session().get(Branch, account.branch_id)
    context: dict[str, Any] = {
        "account": account,
        "problem": problem,
        "branch": branch or first_branch(session()),
        "account_no": raw.strip()[:40],
    }
    if account is not None:
        context.update(_account_context(account))
    if _wants_fragment():
        response = make_response(render_block("home.html", "lookup_result", oob=True, **context))
    else:
        # htmx (a history restore included) swaps only 2xx answers: it gets 200 too.
        from_htmx = request.headers.get("HX-Request") == "true"
        response = make_response(
            render_template("home.html", **context), 200 if from_htmx else status
        )
    response.vary.add("HX-Request")
    response.headers["Cache-Control"] = "no-store"
    return response


def _lookup_limited(raw: str, client: str) -> Response:
    """429 for a client that looked up too much: the result block says when to try again."""
    seconds = limits.retry_after("lookup", client)
    context: dict[str, Any] = {
        "account": None,
        "problem": "limited",
        "limit_message": rate_limit_message(seconds),
        "branch": first_branch(session()),
        "account_no": raw.strip()[:40],
    }
    if _wants_fragment():
        body = render_block("home.html", "lookup_result", **context)
    else:
        body = render_template("home.html", **context)
    response = make_response(body, 429)
    response.headers["Retry-After"] = str(seconds)
    return no_store(response)


def _find_by_path(raw: str) -> AccountSummary | None:
    """The account a URL names, its 户号 normalised as the look-up form does."""
    account_no = normalise_account_no(raw)
    return find_account(session(), account_no) if account_no else None


@bp.get("/accounts/<account_no>/verify")
def second_factor(account_no: str) -> Response:
    """The account with the second-factor field open: htmx gets the account block."""
    client = limits.client_address()
    if not limits.allow("lookup", client):
        seconds = limits.retry_after("lookup", client)
        return message_page(rate_limit_message(seconds), 429, retry_after=seconds)
    account = _find_by_path(account_no)
    if account is None:
        return message_page(str(gettext("未找到该户号，请核对后重新输入。")), 404)
    context = _account_context(account, ask_second_factor=True)
    if _wants_fragment():
        return no_store(make_response(render_template("_account.html", **context)))
    context.update(
        problem="",
        branch=session().get(Branch, account.branch_id),
        account_no=account.account_no,
    )
    return no_store(make_response(render_template("home.html", **context)))


@bp.post("/accounts/<account_no>/verify")
def verify(account_no: str) -> Response:
    """Check the second factor: right → details for a while; wrong → said. Every guess counts
    toward the account's limit, whoever makes it.

    htmx gets the account block (base.html lets htmx swap these 4xx answers); a plain post
    is redirected to the look-up on success, else gets the page again.
    """
    client = limits.client_address()
    if not limits.allow("lookup", client):
        seconds = limits.retry_after("lookup", client)
        return message_page(rate_limit_message(seconds), 429, retry_after=seconds)
    account = _find_by_path(account_no)
    if account is None:
        return message_page(str(gettext("未找到该户号，请核对后重新输入。")), 404)
    problem, status = "", 200
    last_four = normalise_last_four(request.form.get("last_four", ""))
    if last_four is None:  # not four digits: no guess was made, nothing to count
        problem, status = "malformed", 400
    # Every guess counts before it is checked: concurrent guesses cannot slip past the
    # limit. A storage failure refuses guesses rather than allowing unlimited ones.
    elif not limits.allow("second_factor", account.account_no, fail_open=False):
        problem, status = "limited", 429
    elif second_factor_matches(session(), account.account_no, last_four):
        remember_verified(account.account_no)
        if not _wants_fragment():
            return make_response(
                redirect(url_for("public.lookup", account_no=account.account_no), 303)
            )
    else:
        problem, status = "wrong", 403
    retry_after = limits.retry_after("second_factor", account.account_no) if status == 429 else 0
    context = _account_context(
        account,
        ask_second_factor=True,
        second_factor_problem=problem,
        limit_message=rate_limit_message(retry_after) if retry_after else "",
    )
    if _wants_fragment():
        response = make_response(render_template("_account.html", **context), status)
    else:
        context.update(problem="", branch=session().get(Branch, account.branch_id))
        context["account_no"] = account.account_no
        response = make_response(render_template("home.html", **context), status)
    if retry_after:
        response.headers["Retry-After"] = str(retry_after)
    return no_store(response)


@bp.get("/info")
def info() -> Response:
    """Public information (《城镇燃气管理条例》 art. 17): tariffs, process, commitments, hotline."""
    branches = list_branches(session())
    code = request.args.get("branch")
    branch = next((b for b in branches if b.code == code), None) if code else None
    if not code and branches:
        branch = branches[0]
    tariffs = (
        tariffs_in_force(session(), branch_id=branch.id, on=local_date(utcnow())) if branch else []
    )
    notices = service_notices(session(), branch_id=branch.id, lang=current_lang()) if branch else []
    page = render_template(
        "info.html",
        branch=branch,
        branches=branches,
        tariffs=tariffs,
        notices=notices,
        unknown_branch=bool(code) and branch is None,
    )
    return make_response(page, 404 if code and branch is None else 200)
