"""The kiosk touch UI: each tap outcome's screen in Chinese and English, polling, the QR page."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from kiosk import receipt
from kiosk.client import Outcome, TapOutcome
from kiosk.ui import TEXTS, Screen, WalkUpOrder, create_ui, qr_svg, ui_context

CARD = {"account_no": "10000001", "meter_no": "M100000011", "card_no": "C100000011"}

#: outcome → (Chinese title, English title, a fact only that screen shows)
CASES: list[tuple[TapOutcome, str, str, str]] = [
    (
        TapOutcome(
            Outcome.LOADED,
            loaded=12345,
            purchase_count=2,
            pending_on_card=12345,
            meter_applied_count=1,
            meter_remaining=4000,
            **CARD,
        ),
        "写卡成功",
        "Gas loaded",
        "123.45 m³",
    ),
    (
        TapOutcome(Outcome.UP_TO_DATE, purchase_count=1, meter_remaining=None, **CARD),
        "卡已是最新",
        "Your card is up to date",
        "M100000011",
    ),
    (
        TapOutcome(Outcome.CARD_FAILED, purchase_count=1, pending_on_card=500, **CARD),
        "卡片离开过早，请重新刷卡",
        "Card pulled too early: tap again",
        "5.00 m³",
    ),
    (
        TapOutcome(Outcome.REFUSED, code="card_lost"),
        "此卡不能使用",
        "This card is refused",
        "",
    ),
    (
        TapOutcome(Outcome.BUSY, code="card_busy", retry_after=3),
        "此卡正在其他终端写卡",
        "Card busy",
        "",
    ),
    (TapOutcome(Outcome.OFFLINE), "无法连接燃气公司服务器", "The server cannot be reached", ""),
    (TapOutcome(Outcome.UNCONFIRMED, **CARD), "请再刷一次卡", "Please tap the card again", ""),
    (TapOutcome(Outcome.OUT_OF_SERVICE), "本机暂停服务", "This kiosk is out of service", ""),
]


@pytest.fixture
def ui() -> Flask:
    return create_ui(None, kiosk_name="测试自助机")


def show(app: Flask, outcome: TapOutcome) -> int:
    return ui_context(app).screen.record(outcome)


@pytest.mark.parametrize(("outcome", "zh", "en", "fact"), CASES)
def test_each_outcome_in_both_languages(
    ui: Flask, outcome: TapOutcome, zh: str, en: str, fact: str
) -> None:
    show(ui, outcome)
    client = ui.test_client()
    page_zh = client.get("/").get_data(as_text=True)
    assert zh in page_zh and en not in page_zh
    assert f'data-outcome="{outcome.outcome.value}"' in page_zh
    page_en = client.get("/?lang=en").get_data(as_text=True)
    assert en in page_en and zh not in page_en
    if fact:
        assert fact in page_zh and fact in page_en
    # "Buy gas here" only once the server said whose card it is
    assert ("/buy" in page_zh) == bool(outcome.card_no)


def test_refusal_says_why(ui: Flask) -> None:
    show(ui, TapOutcome(Outcome.REFUSED, code="card_replaced"))
    page = ui.test_client().get("/?lang=en").get_data(as_text=True)
    assert "This card was replaced by a new one." in page
    show(ui, TapOutcome(Outcome.REFUSED, code="card_mismatch"))
    page = ui.test_client().get("/").get_data(as_text=True)
    assert "请联系燃气公司营业厅" in page


def test_loaded_screen_shows_the_meter_report_and_alarms(ui: Flask) -> None:
    show(
        ui,
        TapOutcome(
            Outcome.UP_TO_DATE,
            meter_applied_count=3,
            meter_remaining=987,
            applied_volume=500,
            alarms_opened=["leak"],
            **CARD,
        ),
    )
    page = ui.test_client().get("/?lang=en").get_data(as_text=True)
    assert "Last report from the meter" in page and "9.87 m³" in page
    assert "Reported applied now" in page and "5.00 m³" in page
    assert "leak" in page


def test_waiting_partial_polls_itself_until_a_tap(ui: Flask) -> None:
    client = ui.test_client()
    page = client.get("/").get_data(as_text=True)
    assert "请刷卡" in page and 'hx-trigger="load delay:1s"' in page
    assert "/screen?since=0" in page
    partial = client.get("/screen?since=0", headers={"HX-Request": "true"})
    assert partial.headers["Vary"] == "HX-Request"
    body = partial.get_data(as_text=True)
    assert "<html" not in body and 'hx-trigger="load delay:1s"' in body
    seq = show(ui, TapOutcome(Outcome.UP_TO_DATE, **CARD))
    body = client.get("/screen?since=0", headers={"HX-Request": "true"}).get_data(as_text=True)
    assert "卡已是最新" in body and "load delay:1s" not in body
    # a result screen waits for the next tap: nothing new is a 204 (no swap)
    assert client.get(f"/screen/next?since={seq}").status_code == 204
    show(ui, TapOutcome(Outcome.OFFLINE))
    newer = client.get(f"/screen/next?since={seq}", headers={"HX-Request": "true"})
    assert newer.status_code == 200 and "无法连接" in newer.get_data(as_text=True)
    # a result left alone goes back to "请刷卡" after a while
    ui_context(ui).screen.recorded_at -= 61
    idle = client.get(f"/screen/next?since={seq + 1}", headers={"HX-Request": "true"})
    assert idle.status_code == 200 and "请刷卡" in idle.get_data(as_text=True)
    # "tap another card" waits for a tap newer than the one shown
    again = client.get(f"/?since={seq + 1}").get_data(as_text=True)
    assert "请刷卡" in again


def test_language_toggle_is_a_cookie(ui: Flask) -> None:
    client = ui.test_client()
    response = client.get("/lang/en?next=/buy")
    assert response.status_code == 302 and response.headers["Location"] == "/buy"
    assert "Tap your card" in client.get("/").get_data(as_text=True)
    assert client.get("/lang/zh?next=//evil.example").headers["Location"] == "/"
    assert "请刷卡" in client.get("/").get_data(as_text=True)


def test_buy_needs_a_tapped_card(ui: Flask) -> None:
    client = ui.test_client()
    assert "请先刷卡" in client.get("/buy").get_data(as_text=True)
    assert client.post("/buy", data={"channel": "alipay", "volume": "1000"}).status_code == 409
    show(ui, TapOutcome(Outcome.UP_TO_DATE, **CARD))
    form = client.get("/buy?lang=en").get_data(as_text=True)
    assert "Buy gas here" in form and "10000001" in form
    assert 'name="volume" value="1000"' in form and 'name="amount" value="5000"' in form
    assert 'name="channel" value="alipay"' in form


def test_cross_origin_post_is_refused(ui: Flask) -> None:
    show(ui, TapOutcome(Outcome.UP_TO_DATE, **CARD))
    response = ui.test_client().post(
        "/buy", data={"channel": "alipay"}, headers={"Origin": "http://evil.example"}
    )
    assert response.status_code == 403


def test_qr_page_and_paid_receipt(ui: Flask, tmp_path: Path) -> None:
    order = WalkUpOrder(
        order_no="2026120400000000000001",
        amount=27200,
        volume=10000,
        channel="alipay",
        qr_code="http://127.0.0.1:5000/sandbox/alipay/cashier/abc",
        account_no="10000001",
        meter_no="M100000011",
        parts=[{"tier": 1, "volume": 5000, "price": "2.61", "amount": 13050}],
    )
    ui_context(ui).screen.orders[order.order_no] = order
    page = ui.test_client().get(f"/buy/{order.order_no}?lang=en").get_data(as_text=True)
    assert "<svg" in page and "Scan with your phone to pay" in page
    assert 'href="http://127.0.0.1:5000/sandbox/alipay/cashier/abc"' in page
    assert "272.00" in page and "100.00 m³" in page and "Tier 1" in page
    assert 'hx-trigger="load delay:1s"' in page  # the payment poll
    assert ui.test_client().get("/buy/unknown").status_code == 404


def test_qr_svg_is_inline_and_escapes_nothing_it_should_not() -> None:
    svg = str(qr_svg("https://example.invalid/?a=1&b=<2>"))
    assert svg.startswith("<svg") and "<2>" not in svg


def test_every_text_has_both_languages() -> None:
    for key, (zh, en) in TEXTS.items():
        assert zh and en, key
        assert zh != en or key == "title", key


def test_screen_remembers_the_last_card() -> None:
    screen = Screen()
    screen.record(TapOutcome(Outcome.UP_TO_DATE, **CARD))
    screen.record(TapOutcome(Outcome.OFFLINE))
    assert screen.card is not None and screen.card.card_no == "C100000011"
    assert screen.latest()[0] == 2


def test_load_receipt_printed_after_a_load(tmp_path: Path) -> None:
    from kiosk.ui import print_load_receipt

    path = tmp_path / "lp0"
    app = create_ui(None, kiosk_name="Kiosk 7", printer=receipt.open_printer(f"file:{path}"))
    context = ui_context(app)
    print_load_receipt(context, TapOutcome(Outcome.UP_TO_DATE, **CARD))
    print_load_receipt(
        context,
        TapOutcome(Outcome.LOADED, loaded=2500, purchase_count=4, pending_on_card=2500, **CARD),
    )
    context.printer.close()
    out = path.read_bytes()
    assert out.count(b"Gas loaded onto card") == 1  # nothing printed for an up-to-date tap
    assert b"25.00 m3" in out and b"Kiosk 7" in out and b"C100000011" in out


def test_ranqi_kiosk_has_the_ui_command() -> None:
    from kiosk.__main__ import commands

    assert "ui" in commands()
