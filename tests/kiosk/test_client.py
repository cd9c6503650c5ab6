"""The kiosk API client over real HTTP, its configuration and its command line.

Against the real app (served on loopback): tokens cached, renewed before expiry and
once on a 401, refused credentials, sync and confirm as the reader's CardHost,
refusals with the server's codes, busy with Retry-After. Against a small WSGI
server that answers wrongly on purpose: answers the client cannot understand,
proxy errors, and timeouts. Then ``ranqi-kiosk`` itself.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session
from werkzeug.wrappers import Request, Response

import cardfmt
from kiosk import __main__ as cli
from kiosk.client import (
    BadAnswer,
    CardBusy,
    CardRefused,
    Kiosk,
    KioskClient,
    NotAuthorized,
    Outcome,
    ServerUnreachable,
)
from kiosk.config import ConfigError, KioskConfig, reader_opener
from kiosk.virtual_card import VirtualField
from models.staff import Kiosk as KioskRow
from models.staff import KioskToken
from tests.factories import gen_account
from tests.http_server import serve
from tests.kiosk import test_end_to_end as e2e
from tests.test_models_cardwrites import issue_image, paid_credit

ROOT = Path(__file__).resolve().parents[2]

# the end-to-end module's served app and reader field, on this module's own database
loop_engine = e2e.loop_engine
server = e2e.server
field = e2e.field
Server = e2e.Server


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_for(server: Server, **kwargs: Any) -> KioskClient:
    return KioskClient(server.url, server.client_id, server.client_secret, **kwargs)


def new_card(server: Server, volume: int | None = None) -> tuple[str, bytes]:
    """A card (tag UID hex, issue image) on a new account, with a paid credit if ``volume``."""
    with Session(server.engine) as s:
        card = gen_account(s).meters[0].cards[0]
        if volume is not None:
            paid_credit(s, card.meter, volume)
        s.commit()
        assert card.tag_uid is not None
        return card.tag_uid, issue_image(card, server.keys)


def test_token_is_cached_and_renewed_before_it_expires(server: Server) -> None:
    clock = Clock()
    client = client_for(server, clock=clock)
    client.whoami()
    client.whoami()
    assert client.tokens_fetched == 1
    first = client.token()
    lifetime = server.app.config["KIOSK_TOKEN_SECONDS"]
    clock.now += lifetime - 31  # renewed 30 s before it expires, not earlier
    assert client.token() == first
    clock.now += 2
    assert client.token() != first and client.tokens_fetched == 2
    assert client.whoami()["client_id"] == server.client_id


def test_a_401_gets_one_new_token_and_one_retry(server: Server) -> None:
    client = client_for(server)
    client.whoami()
    with Session(server.engine) as s:
        s.execute(update(KioskToken).values(revoked=True))
        s.commit()
    assert client.whoami()["client_id"] == server.client_id
    assert client.tokens_fetched == 2


def test_refused_credentials_and_a_disabled_kiosk(server: Server) -> None:
    wrong = KioskClient(server.url, server.client_id, "not the secret")
    with pytest.raises(NotAuthorized, match="credentials"):
        wrong.whoami()
    client_id, secret = e2e.register_kiosk(server.engine, "停用机")
    client = KioskClient(server.url, client_id, secret)
    client.whoami()
    with Session(server.engine) as s:
        s.execute(update(KioskRow).where(KioskRow.client_id == client_id).values(enabled=False))
        s.commit()
    # the cached token is refused at once; a new one is refused too
    with pytest.raises(NotAuthorized):
        client.whoami()


def test_sync_and_confirm_as_the_card_host(server: Server) -> None:
    uid, raw = new_card(server, 2500)
    client = client_for(server)
    answer = client.sync_card(bytes.fromhex(uid), raw)
    assert answer.order is not None and answer.loading == 2500
    assert answer.order.password == server.keys.tag_password(answer.summary.card_no, 1)
    target = cardfmt.decode(answer.order.target, public_keys=server.keys.public_keys)
    assert (target.current.purchase_count, target.current.pending_volume) == (1, 2500)
    assert (answer.summary.purchase_count, answer.summary.pending_volume) == (0, 0)

    with pytest.raises(CardRefused) as mismatch:
        client.confirm(answer.order.write_id, raw)
    assert (mismatch.value.code, mismatch.value.status) == ("readback_mismatch", 409)
    client.confirm(answer.order.write_id, answer.order.target)
    confirmed = client.confirm_write(answer.order.write_id, answer.order.target)
    assert (confirmed.loaded, confirmed.purchase_count, confirmed.pending_volume) == (2500, 1, 2500)
    # nothing more to load: the CardHost answer is no write
    assert client.sync(bytes.fromhex(uid), answer.order.target) is None


def test_refusals_carry_the_server_code(server: Server) -> None:
    uid, raw = new_card(server)
    client = client_for(server)
    with pytest.raises(CardRefused) as foreign_tag:
        client.sync(bytes.fromhex("04" * 7), raw)
    assert (foreign_tag.value.code, foreign_tag.value.status) == ("tag_uid_mismatch", 422)
    with pytest.raises(CardRefused) as unreadable:
        client.sync(bytes.fromhex(uid), bytes(cardfmt.IMAGE_SIZE))
    assert unreadable.value.code == "card_unreadable"
    assert unreadable.value.detail.get("reason")
    with pytest.raises(CardRefused) as unknown:
        client.confirm("f" * 32, raw)
    assert (unknown.value.code, unknown.value.status) == ("unknown_write", 404)


def test_another_kiosk_writing_is_busy_with_retry_after(server: Server) -> None:
    uid, raw = new_card(server, 100)
    first = client_for(server)
    assert first.sync(bytes.fromhex(uid), raw) is not None
    other_id, other_secret = e2e.register_kiosk(server.engine, "二号机")
    with pytest.raises(CardBusy) as busy:
        KioskClient(server.url, other_id, other_secret).sync(bytes.fromhex(uid), raw)
    assert busy.value.code == "card_busy" and 0 < busy.value.retry_after <= 30
    # the first kiosk, tapping again, may: its own torn write is reissued at once
    order = first.sync_card(bytes.fromhex(uid), raw).order
    assert order is not None
    first.confirm(order.write_id, order.target)


# -- a server that answers wrongly on purpose -------------------------------------------------

Handler = Callable[[Request], Response]


def token_answer() -> Response:
    return Response(
        json.dumps({"access_token": "t", "token_type": "Bearer", "expires_in": 300}),
        content_type="application/json",
    )


@pytest.fixture
def odd_server() -> Iterator[tuple[str, dict[str, Handler]]]:
    """A WSGI server whose /sync and /kiosk answers the test sets; /token always works."""
    routes: dict[str, Handler] = {}

    @Request.application
    def app(request: Request) -> Response:
        if request.path.endswith("/token"):
            return token_answer()
        return routes[request.path.rsplit("/", 1)[-1]](request)

    with serve(app) as url:
        yield url, routes


def sync_body(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": "write",
        "write_id": "abc",
        "image": base64.b64encode(bytes(cardfmt.IMAGE_SIZE)).decode(),
        "tag_password": "a1b2c3d4e5f6",
        "plan": [],
        "loading": 10,
        "account_no": "1",
        "meter_no": "M1",
        "card_no": "C1",
        "card": {"purchase_count": 0, "pending_volume": 0, "pending_applied": True},
        "meter": {"applied_count": 0, "remaining": None, "reported_at": None},
        "applied_volume": 0,
        "alarms_opened": [],
    }
    body.update(changes)
    return body


def answer(status: int, body: Any, **headers: str) -> Handler:
    text = body if isinstance(body, str) else json.dumps(body)
    kind = "text/html" if isinstance(body, str) else "application/json"
    return lambda request: Response(text, status=status, content_type=kind, headers=headers)


def test_answers_the_kiosk_cannot_understand(odd_server: tuple[str, dict[str, Handler]]) -> None:
    url, routes = odd_server
    client = KioskClient(url, "kiosk-x", "secret")
    uid, image = bytes(7), bytes(cardfmt.IMAGE_SIZE)
    routes["sync"] = answer(200, sync_body())
    order = client.sync(uid, image)
    assert order is not None and order.write_id == "abc"  # the well-formed answer parses
    cases: list[tuple[Handler, type[Exception]]] = [
        (answer(200, "<html>captive portal</html>"), BadAnswer),
        (answer(200, sync_body(status="later")), BadAnswer),
        (answer(200, sync_body(image=base64.b64encode(b"short").decode())), BadAnswer),
        (answer(200, sync_body(tag_password="zz")), BadAnswer),
        (answer(200, sync_body(loading=-5)), BadAnswer),
        (answer(200, sync_body(loading=1.5)), BadAnswer),
        (answer(200, sync_body(card=None)), BadAnswer),
        (answer(418, {"error": "teapot"}), BadAnswer),
        (answer(502, "<html>Bad Gateway</html>"), ServerUnreachable),
        (
            answer(503, {"error": {"code": "card_keys_unavailable", "message": "m"}}),
            ServerUnreachable,
        ),
        (
            answer(409, {"error": {"code": "card_busy", "message": "m"}}, **{"Retry-After": "7"}),
            CardBusy,
        ),
        (answer(403, {"error": {"code": "card_lost", "message": "lost"}}), CardRefused),
    ]
    for handler, error in cases:
        routes["sync"] = handler
        with pytest.raises(error) as raised:
            client.sync(uid, image)
        assert type(raised.value) is error, raised.value
    routes["sync"] = answer(
        409, {"error": {"code": "card_busy", "message": "m"}}, **{"Retry-After": "7"}
    )
    with pytest.raises(CardBusy) as busy:
        client.sync(uid, image)
    assert busy.value.retry_after == 7
    routes["confirm"] = answer(200, {"status": "confirmed", "write_id": "other"})
    with pytest.raises(BadAnswer):
        client.confirm("abc", image)


def test_a_slow_server_is_unreachable_within_the_timeout(
    odd_server: tuple[str, dict[str, Handler]],
) -> None:
    url, routes = odd_server
    release = threading.Event()

    def slow(request: Request) -> Response:
        release.wait(5)
        return answer(200, sync_body())(request)

    routes["sync"] = slow
    client = KioskClient(url, "kiosk-x", "secret", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(ServerUnreachable, match="did not answer"):
        client.sync(bytes(7), bytes(cardfmt.IMAGE_SIZE))
    release.set()
    assert time.monotonic() - started < 3


def test_server_unreachable_when_nothing_listens() -> None:
    with serve(lambda environ, start: []) as url:
        pass
    with pytest.raises(ServerUnreachable):
        KioskClient(url, "kiosk-x", "secret", timeout=1).whoami()


# -- configuration -----------------------------------------------------------------------------


def test_configuration_defaults_and_environment(tmp_path: Path) -> None:
    assert KioskConfig.from_env({}) == KioskConfig()
    assert KioskConfig().reader == "usb" and KioskConfig().ui_port == 8088
    (tmp_path / "secret").write_text("s3cret\n")
    config = KioskConfig.from_env(
        {
            "RANQI_KIOSK_SERVER_URL": "https://gas.example.cn/",
            "RANQI_KIOSK_CLIENT_ID": "kiosk-1",
            "RANQI_KIOSK_CLIENT_SECRET": "ignored",
            "RANQI_KIOSK_CLIENT_SECRET_FILE": str(tmp_path / "secret"),
            "RANQI_KIOSK_READER": "udp:127.0.0.1:54321",
            "RANQI_KIOSK_TIMEOUT": "2.5",
            "RANQI_KIOSK_CARD_WAIT": "1",
            "RANQI_KIOSK_UI_HOST": "::1",
            "RANQI_KIOSK_UI_PORT": "9000",
            "RANQI_KIOSK_PRINTER": "file:/dev/usb/lp0",
        }
    )
    assert config.server_url == "https://gas.example.cn"
    assert (config.client_id, config.client_secret) == ("kiosk-1", "s3cret")
    assert (config.timeout, config.card_wait, config.ui_port) == (2.5, 1.0, 9000)
    assert "s3cret" not in repr(config)
    config.require_credentials()
    with pytest.raises(ConfigError, match="RANQI_KIOSK_CLIENT_ID"):
        KioskConfig().require_credentials()
    with pytest.raises(ConfigError, match="RANQI_KIOSK_TIMEOUT"):
        KioskConfig.from_env({"RANQI_KIOSK_TIMEOUT": "soon"})
    with pytest.raises(ConfigError, match="loopback"):
        reader_opener("udp:192.0.2.1:54321")
    with pytest.raises(ConfigError, match="port"):
        reader_opener("udp:127.0.0.1")


# -- the command line ---------------------------------------------------------------------------


def kiosk_env(server: Server, monkeypatch: pytest.MonkeyPatch, reader: str = "usb") -> None:
    monkeypatch.setenv("RANQI_KIOSK_SERVER_URL", server.url)
    monkeypatch.setenv("RANQI_KIOSK_CLIENT_ID", server.client_id)
    monkeypatch.setenv("RANQI_KIOSK_CLIENT_SECRET", server.client_secret)
    monkeypatch.setenv("RANQI_KIOSK_READER", reader)
    monkeypatch.delenv("RANQI_KIOSK_CLIENT_SECRET_FILE", raising=False)


def test_whoami_command(
    server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    kiosk_env(server, monkeypatch)
    assert cli.main(["whoami"]) == 0
    assert json.loads(capsys.readouterr().out)["client_id"] == server.client_id
    monkeypatch.setenv("RANQI_KIOSK_CLIENT_SECRET", "wrong")
    assert cli.main(["whoami"]) == 1
    assert "refused" in capsys.readouterr().err
    monkeypatch.delenv("RANQI_KIOSK_CLIENT_ID")
    assert cli.main(["whoami"]) == 2


def test_run_once_serves_a_tap(
    server: Server,
    field: VirtualField,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    loop = e2e.make_loop(server, field)
    loop.pay(600)
    kiosk_env(server, monkeypatch, f"udp:127.0.0.1:{field.port}")
    field.put(loop.card)
    assert cli.main(["run", "--once"]) == 0
    line = capsys.readouterr().out
    assert line.startswith("tap loaded") and "loaded=600" in line and loop.card_no in line
    assert loop.credits() == [(600, "loaded")]


def test_kiosk_run_logs_each_tap_and_stops(server: Server, field: VirtualField) -> None:
    loop = e2e.make_loop(server, field)
    loop.pay(300)
    kiosk = Kiosk(e2e.kiosk_client(server), lambda: e2e.open_reader(field.port), wait=0.2)
    stop = threading.Event()
    lines: list[str] = []
    runner = threading.Thread(target=kiosk.run, args=(stop,), kwargs={"log_line": lines.append})
    runner.start()
    field.put(loop.card)
    deadline = time.monotonic() + 10
    while len(lines) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    runner.join(timeout=5)
    assert not runner.is_alive()
    # the card stayed on the reader: loaded once, then read as up to date
    assert lines[0].startswith("tap loaded") and lines[1].startswith("tap up_to_date"), lines
    assert loop.credits() == [(300, "loaded")]


def test_ranqi_kiosk_run_serves_a_card_once_and_stops_on_ctrl_c(
    server: Server, field: VirtualField
) -> None:
    """The real program: one log line per tap, a card left on the reader is not served
    again, and Ctrl-C ends it cleanly (nfcpy swallows KeyboardInterrupt while polling)."""
    loop = e2e.make_loop(server, field)
    loop.pay(450)
    env = dict(
        os.environ,
        RANQI_KIOSK_CLIENT_ID=server.client_id,
        RANQI_KIOSK_CLIENT_SECRET=server.client_secret,
        RANQI_KIOSK_SERVER_URL=server.url,
        RANQI_KIOSK_READER=f"udp:127.0.0.1:{field.port}",
        RANQI_KIOSK_CARD_WAIT="0.5",
    )
    field.put(loop.card)
    process = subprocess.Popen(
        [sys.executable, "-m", "kiosk", "run"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    lines: list[str] = []
    tapped = threading.Event()

    def read_log() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            if " tap " in line:
                tapped.set()

    reader = threading.Thread(target=read_log, daemon=True)
    reader.start()
    try:
        assert tapped.wait(30), f"no tap logged: {lines}"
        time.sleep(1.0)  # the card stays on the reader: no second tap
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        field.take()
    reader.join(timeout=5)
    process.stderr.close()
    log = "".join(lines)
    assert process.returncode == 0, log
    taps = [line for line in lines if " tap " in line]
    assert len(taps) == 1 and "tap loaded" in taps[0] and "loaded=450" in taps[0], log
    assert "stopped" in log and "Traceback" not in log
    assert loop.credits() == [(450, "loaded")]


def test_other_modules_add_subcommands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RANQI_KIOSK_EXTENSIONS", __name__)
    assert "hello" in cli.commands() and "run" in cli.commands()
    assert cli.main(["hello", "--name", "燃气"]) == 0
    assert capsys.readouterr().out.strip() == "hello 燃气"


def _hello(args: Any, config: KioskConfig) -> int:
    print(f"hello {args.name}")
    return 0


KIOSK_COMMANDS = {
    "hello": cli.Command(
        "say hello", _hello, lambda parser: parser.add_argument("--name", default="")
    )
}


def test_no_card_asks_the_server_nothing(field: VirtualField) -> None:
    with serve(lambda environ, start: []) as url:
        pass
    kiosk = Kiosk(
        KioskClient(url, "k", "s", timeout=1), lambda: e2e.open_reader(field.port), wait=0.2
    )
    assert kiosk.tap().outcome is Outcome.NO_CARD  # no card: the server is not even asked
