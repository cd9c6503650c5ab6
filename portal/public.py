"""Residents' pages: home and account look-up, public information (条例 art. 17)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, make_response, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from flask_babel import get_locale, refresh
from jinja2_fragments.flask import render_block

from models.base import utcnow
from models.clock import local_date
from models.lookup import (
    find_account,
    first_branch,
    list_branches,
    normalise_account_no,
    service_notices,
)
from models.org import Branch
from models.tariffs import tariffs_in_force
from portal import SUPPORTED_LOCALES
from portal import format as fmt
from portal.db import session

bp = Blueprint("public", __name__)

#: how long the language chosen with ?lang= is remembered
LANG_COOKIE_MAX_AGE = 365 * 24 * 60 * 60


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
    )


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
    response.vary.update(("Cookie", "Accept-Language"))
    return response


def _wants_fragment() -> bool:
    """An htmx request that swaps part of a page (a history restore needs the whole page)."""
    return (
        request.headers.get("HX-Request") == "true"
        and request.headers.get("HX-History-Restore-Request") != "true"
    )


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
    # Rate limiting against enumeration and the second factor (last four digits of the
    # phone) that unlocks history and buying come with the purchase flow.
    raw = request.args.get("account_no", "")
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
