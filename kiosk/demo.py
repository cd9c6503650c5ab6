"""``python -m kiosk.demo``: the whole loop in a browser (pay → tap → meter → valve).

Beside the portal (``make run``), this starts a virtual reader field with the demo
cards (from ``ranqi demo-cards DIR``), a meter simulator per demo meter, the reader
loop talking to the portal's kiosk API, and the kiosk's touch UI with demo controls
at ``/demo``: put a card on the reader, pull it away after K writes (a torn write on
purpose), take it to its meter (the meter applies the purchase and writes its report),
burn gas until the valve closes, raise a leak alarm; the meter's display and the
card's decoded state are shown beside the kiosk screen.

The meter simulators hold the meters' report keys, because they stand in for real
meters; the kiosk itself holds none, and nothing here can sign a purchase (only the
server's public keys are in ``demo-cards.json``). See docs/kiosk-demo.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flask import Blueprint, Response, redirect, render_template, request
from werkzeug.wrappers import Response as BaseResponse

import cardfmt
from kiosk import receipt
from kiosk.cardio import connect_tag, open_reader, provision_card
from kiosk.client import Kiosk, TapOutcome
from kiosk.meter_sim import InsertResult, MeterSimulator, ValveReason
from kiosk.ui import SellingClient, TapWorker, create_ui, m3, print_load_receipt, text, ui_context
from kiosk.virtual_card import PullMode, VirtualField, VirtualNtag215, pull_on_write

log = logging.getLogger(__name__)

CARDS_FILE = "demo-cards.json"
METERS_FILE = "meters.json"
CREDENTIALS_FILE = "kiosk.json"
DEFAULT_DIR = Path("instance/kiosk-demo")
DEFAULT_UI_PORT = 8088
#: the meter state kept across restarts (the card files keep the cards')
_METER_FIELDS = (
    "purchase_count",
    "remaining",
    "total_used",
    "total_purchased",
    "applied_under_count",
    "replacement_count",
    "report_seq",
)


@dataclass
class DemoCard:
    """One demo card, the chip that carries it, and the meter it belongs to."""

    serial: int
    account_no: str
    meter_no: str
    card_no: str
    chip: VirtualNtag215
    meter: MeterSimulator


def _write_private(path: Path, text_: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text_)
    os.replace(temporary, path)


class Demo:
    """The virtual kiosk: field, cards, meters, reader loop and the UI's state."""

    def __init__(
        self,
        directory: Path,
        client: SellingClient,
        *,
        reader_wait: float = 1.0,
        printer: Any = None,
        kiosk_name: str = "演示自助机 Demo kiosk",
    ) -> None:
        self.directory = directory
        data = json.loads((directory / CARDS_FILE).read_text(encoding="utf-8"))
        self.public_keys = {
            int(version): Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
            for version, key in data["public_keys"].items()
        }
        self._issued = {row["card_no"]: row for row in data["cards"]}
        saved = self._load_meters()
        (directory / "cards").mkdir(exist_ok=True)
        self.cards: list[DemoCard] = []
        self._fresh: list[DemoCard] = []
        for serial, row in enumerate(data["cards"]):
            path = directory / "cards" / f"{row['card_no']}.ntag215"
            fresh = not path.exists()
            chip = VirtualNtag215.load(path, uid=bytes.fromhex(row["tag_uid"]))
            image = cardfmt.decode(base64.b64decode(row["image"]), public_keys=self.public_keys)
            issued = image.current
            meter = MeterSimulator(
                row["meter_no"],
                bytes.fromhex(row["meter_key"]),
                self.public_keys,
                int(row["capacity"]),
                # the meter has taken what the server last confirmed as applied
                purchase_count=issued.purchase_count - (1 if issued.pending_volume else 0),
                replacement_count=image.header.replacement_count,
            )
            self._restore_meter(meter, saved.get(row["meter_no"]))
            card = DemoCard(serial, row["account_no"], row["meter_no"], row["card_no"], chip, meter)
            self.cards.append(card)
            if fresh:
                self._fresh.append(card)
        self.field = VirtualField()
        self.kiosk = Kiosk(client, lambda: open_reader(self.field.port), wait=reader_wait)
        self.app = create_ui(
            client,
            kiosk_name=kiosk_name,
            printer=printer,
            blueprints=[demo_blueprint(self)],
            footer_links=[("Demo controls 演示控制台", "/demo")],
        )
        context = ui_context(self.app)
        self.worker = TapWorker(
            self.kiosk, context.screen, on_tap=lambda o: self._after_tap(context, o)
        )
        self._lock = threading.Lock()
        #: the last demo action, in words, for the control panel
        self.message = ""

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Demo:
        """Start the field, issue new cards onto their chips, then serve taps."""
        self.field.start()
        for card in self._fresh:
            self._provision(card)
        self._fresh.clear()
        self.worker.start()
        return self

    def stop(self) -> None:
        """Stop serving taps and close the field."""
        self.field.take()
        self.worker.stop()
        self.field.stop()

    def _provision(self, card: DemoCard) -> None:
        # the issuing desk's write, through nfcpy like every other write to the card
        row = self._issued[card.card_no]
        self.field.put(card.chip)
        clf = open_reader(self.field.port)
        try:
            tag = connect_tag(clf, timeout=3.0)
            provision_card(tag, base64.b64decode(row["image"]), bytes.fromhex(row["tag_password"]))
        finally:
            clf.close()
            self.field.take()
        log.info("issued %s onto tag %s", card.card_no, card.chip.uid.hex())

    def _after_tap(self, context: Any, outcome: TapOutcome) -> None:
        print_load_receipt(context, outcome)

    # -- the controls ------------------------------------------------------------------------

    def card(self, serial: int) -> DemoCard:
        """Demo card number ``serial`` (0-based); IndexError if there is none."""
        return self.cards[serial]

    def tap(self, serial: int, *, pull_at_write: int | None = None) -> str:
        """Put the card on the reader (optionally to be pulled at its K-th WRITE)."""
        card = self.card(serial)
        with self._lock:
            if self.field.card is card.chip:
                # tapping the card that lies there: lift it and put it down again
                self.field.take()
                self.worker.card_removed()
            self.field.put(card.chip)
            if pull_at_write:
                self.field.pull_when(pull_on_write(pull_at_write), PullMode.BEFORE)
        self.message = f"{card.card_no} on the reader" + (
            f", to be pulled at WRITE #{pull_at_write}" if pull_at_write else ""
        )
        return self.message

    def take(self) -> str:
        """Take the card away from the reader."""
        chip = self.field.take()
        self.worker.card_removed()
        self.message = "reader empty" if chip is None else f"card {chip.uid.hex()} taken away"
        return self.message

    def where(self, card: DemoCard) -> str:
        """``reader`` when the card lies on the reader, else ``pocket``."""
        return "reader" if self.field.card is card.chip else "pocket"

    def insert(self, serial: int) -> InsertResult:
        """Take the card to its meter: the meter applies the purchase and writes its report."""
        card = self.card(serial)
        with self._lock:
            if self.field.card is card.chip:
                self.field.take()
                self.worker.card_removed()
            chip = card.chip
            before = chip.user_memory
            after, result = card.meter.insert(before)
            if after != before:
                # the meter's own contact write, not the kiosk's radio
                start = 4 * 4
                chip.memory[start : start + len(after)] = after
                chip.save()
            self._save_meters()
        self.message = f"{card.meter_no}: {result.outcome.value}" + (
            f", +{m3(result.applied_volume)} m³" if result.applied_volume else ""
        )
        return result

    def burn(self, serial: int, volume: int) -> int:
        """Use ``volume`` (0.01 m³) of gas at the card's meter; the valve closes at zero."""
        card = self.card(serial)
        with self._lock:
            used = card.meter.burn(volume)
            self._save_meters()
        self.message = f"{card.meter_no} burned {m3(used)} m³"
        return used

    def alarm(self, serial: int, kind: str, *, clear: bool = False) -> str:
        """Raise (or clear) a meter alarm: leak, tamper or low_battery; a leak shuts the valve."""
        card = self.card(serial)
        with self._lock:
            if clear:
                card.meter.clear_alarm(kind)
            else:
                card.meter.raise_alarm(kind)
            self._save_meters()
        self.message = f"{card.meter_no}: {kind} {'cleared' if clear else 'raised'}"
        return self.message

    def card_view(self, card: DemoCard) -> dict[str, Any]:
        """The card's decoded state (or why it cannot be read) and its meter's display."""
        view: dict[str, Any] = {"card": card, "where": self.where(card), "meter": card.meter}
        try:
            image = cardfmt.decode(
                card.chip.user_memory, public_keys=self.public_keys, meter_key=card.meter.report_key
            )
            view["purchase"] = image.current
            view["report"] = image.report
            view["slots"] = [status.value for status in image.slot_status]
        except cardfmt.CardError as error:
            view["error"] = str(error)
        valve = card.meter.valve_closed_for
        view["valve"] = "open" if valve is None else f"closed ({valve.value})"
        view["alarms"] = [
            (a.name or "").lower() for a in cardfmt.Alarm if a and a in card.meter.alarms
        ]
        return view

    # -- meter state across restarts ---------------------------------------------------

    def _load_meters(self) -> dict[str, dict[str, Any]]:
        path = self.directory / METERS_FILE
        if not path.exists():
            return {}
        saved: dict[str, dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        return saved

    @staticmethod
    def _restore_meter(meter: MeterSimulator, state: dict[str, Any] | None) -> None:
        if not state:
            return
        for name in _METER_FIELDS:
            setattr(meter, name, int(state[name]))
        reason = state.get("valve_closed_for")
        meter.valve_closed_for = ValveReason(reason) if reason else None
        meter.alarms = cardfmt.Alarm(int(state.get("alarms", 0)))

    def _save_meters(self) -> None:
        state = {
            card.meter_no: {
                **{name: getattr(card.meter, name) for name in _METER_FIELDS},
                "valve_closed_for": (
                    card.meter.valve_closed_for.value if card.meter.valve_closed_for else None
                ),
                "alarms": int(card.meter.alarms),
            }
            for card in self.cards
        }
        (self.directory / METERS_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")


def demo_blueprint(demo: Demo) -> Blueprint:
    """The demo's control panel at ``/demo``, bound to ``demo``."""
    bp = Blueprint("kiosk_demo", __name__, url_prefix="/demo", template_folder="templates")

    def panel() -> str:
        lang = request.args.get("lang") or request.cookies.get("lang") or "zh"
        return render_template(
            "_demo_panel.html",
            views=[demo.card_view(card) for card in demo.cards],
            message=demo.message,
            m3=m3,
            lang=lang,
            t=lambda key: text(key, lang),
        )

    def done() -> BaseResponse | str:
        if request.headers.get("HX-Request") == "true":
            return panel()
        return redirect("/demo")

    @bp.get("")
    def page() -> str:
        """The kiosk screen (in a frame) beside the demo controls."""
        lang = request.args.get("lang") or request.cookies.get("lang") or "zh"
        return render_template(
            "demo.html", panel=panel(), lang=lang, t=lambda key: text(key, lang), ui=ui_context_of()
        )

    def ui_context_of() -> Any:
        return ui_context(demo.app)

    @bp.get("/panel")
    def panel_partial() -> Response:
        """The controls and the cards' and meters' state (polled)."""
        response = Response(panel())
        response.headers["Vary"] = "HX-Request"
        return response

    def serial() -> int:
        value = request.form.get("card", "")
        if not value.isdigit() or int(value) >= len(demo.cards):
            raise _BadControl("pick a card")
        return int(value)

    def number(name: str) -> int | None:
        value = request.form.get(name, "").strip()
        if not value:
            return None
        if not re.fullmatch(r"\d{1,6}", value):
            raise _BadControl(f"{name} must be a whole number")
        return int(value)

    @bp.post("/tap")
    def tap() -> BaseResponse | str:
        """Put a card on the reader (and maybe pull it away at its K-th WRITE)."""
        demo.tap(serial(), pull_at_write=number("pull"))
        return done()

    @bp.post("/take")
    def take() -> BaseResponse | str:
        """Take the card off the reader."""
        demo.take()
        return done()

    @bp.post("/meter")
    def insert() -> BaseResponse | str:
        """Insert the card into its meter."""
        demo.insert(serial())
        return done()

    @bp.post("/burn")
    def burn() -> BaseResponse | str:
        """Burn whole m³ of gas at the card's meter."""
        demo.burn(serial(), (number("m3") or 0) * 100)
        return done()

    @bp.post("/alarm")
    def alarm() -> BaseResponse | str:
        """Raise or clear a leak alarm at the card's meter."""
        demo.alarm(serial(), "leak", clear=request.form.get("clear") == "1")
        return done()

    @bp.errorhandler(_BadControl)
    def bad_control(error: _BadControl) -> tuple[str, int]:
        demo.message = str(error)
        return panel(), 400

    return bp


class _BadControl(ValueError):
    """A demo control with a missing or malformed field."""


# -- setting up: credentials and card images through the portal's CLI ---------------------


def _ranqi() -> str:
    return str(Path(sys.executable).with_name("ranqi"))


def ensure_credentials(directory: Path) -> tuple[str, str]:
    """The demo kiosk's client id and secret: env, DIR/kiosk.json, or ``ranqi kiosks add``."""
    client_id = os.environ.get("RANQI_KIOSK_CLIENT_ID", "")
    secret = os.environ.get("RANQI_KIOSK_CLIENT_SECRET", "")
    if client_id and secret:
        return client_id, secret
    path = directory / CREDENTIALS_FILE
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        return str(saved["client_id"]), str(saved["client_secret"])
    output = subprocess.run(  # noqa: S603 - our own console script, fixed arguments
        [_ranqi(), "kiosks", "add", "演示自助机 Demo kiosk", "--location", "kiosk.demo"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    found = dict(re.findall(r"^(client_id|client_secret):\s*(\S+)", output, re.M))
    if set(found) != {"client_id", "client_secret"}:
        raise RuntimeError(f"`ranqi kiosks add` printed no credentials: {output!r}")
    _write_private(path, json.dumps(found))
    return found["client_id"], found["client_secret"]


def ensure_cards(directory: Path) -> None:
    """Write DIR/demo-cards.json with ``ranqi demo-cards`` unless it is there."""
    if (directory / CARDS_FILE).exists():
        return
    command = [_ranqi(), "demo-cards", str(directory)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        # until the lead registers the command in `ranqi`, the module runs it
        command = [sys.executable, "-m", "portal.cli_demo_cards", str(directory)]
        subprocess.run(command, check=True)  # noqa: S603


def main(argv: list[str] | None = None) -> int:
    """Run the demo: portal at RANQI_KIOSK_SERVER_URL, this kiosk's UI on loopback."""
    from werkzeug.serving import run_simple

    parser = argparse.ArgumentParser(prog="python -m kiosk.demo", description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="demo state (cards, meters)")
    parser.add_argument("--port", type=int, default=DEFAULT_UI_PORT, help="UI port on 127.0.0.1")
    parser.add_argument(
        "--server",
        default=os.environ.get("RANQI_KIOSK_SERVER_URL", "http://127.0.0.1:5000"),
        help="the portal",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.dir.mkdir(parents=True, exist_ok=True)
    ensure_cards(args.dir)
    client_id, secret = ensure_credentials(args.dir)
    client = SellingClient(args.server, client_id, secret)
    printer = receipt.open_printer(os.environ.get("RANQI_KIOSK_PRINTER", ""))
    demo = Demo(args.dir, client, printer=printer).start()
    print(f"kiosk demo: http://127.0.0.1:{args.port}/demo  (portal: {args.server})")
    try:
        run_simple("127.0.0.1", args.port, demo.app, threaded=True)
    finally:
        demo.stop()
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
