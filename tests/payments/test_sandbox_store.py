"""The sandbox gateways' store and notify sender, over real HTTP on loopback."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from payments.sandbox.sender import NotifySender
from payments.sandbox.store import SandboxStore
from tests.http_server import serve


class Receiver:
    """A merchant notify endpoint that fails the first ``failures`` deliveries."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.bodies: list[bytes] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        self.bodies.append(body)
        answer = b"fail" if len(self.bodies) <= self.failures else b"success"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [answer]


def _rules() -> dict[str, tuple[list[float], Any]]:
    return {"alipay": ([240, 600], lambda status, body: body.strip() == b"success")}


def test_trade_is_created_once(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path / "s.sqlite3")
    first = store.create_trade(
        provider="alipay",
        order_no="R1",
        trade_no="T1",
        app_id="a",
        merchant_id="m",
        amount=100,
        subject="gas",
        status="pending",
        notify_url="http://127.0.0.1:1/",
    )
    again = store.create_trade(
        provider="alipay",
        order_no="R1",
        trade_no="T2",
        app_id="a",
        merchant_id="m",
        amount=999,
        subject="gas",
        status="pending",
        notify_url="http://127.0.0.1:1/",
    )
    assert again == first and again["amount"] == 100
    assert store.set_status("alipay", "R1", "paid", only_from=("pending",))
    assert not store.set_status("alipay", "R1", "closed", only_from=("pending",))
    trade = store.trade("alipay", "R1")
    assert trade is not None and trade["status"] == "paid" and trade["paid_at"]


def test_refunds_are_idempotent(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path / "s.sqlite3")
    store.add_refund("alipay", "RF1", "R1", 50)
    store.add_refund("alipay", "RF1", "R1", 50)
    store.add_refund("alipay", "RF2", "R1", 20)
    assert store.refunded_total("alipay", "R1") == 70


def test_notify_retried_on_schedule_until_accepted(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path / "s.sqlite3")
    receiver = Receiver(failures=1)
    with serve(receiver) as url:
        store.queue_notify("alipay", "R1", url + "/notify", b"a=1", {"Content-Type": "x"})
        sender = NotifySender(store, _rules(), time_scale=0.001)
        assert sender.deliver_once() == 1  # answered "fail": rescheduled 0.24 s later
        (queued,) = store.notifies("alipay", "R1")
        assert queued["attempts"] == 1 and queued["delivered_at"] is None
        assert sender.deliver_once() == 0  # not due yet
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        attempted = store.deliver_due(lambda item: (True, "ok"), {}, now=later)
        assert attempted == 1
    (queued,) = store.notifies("alipay", "R1")
    assert queued["attempts"] == 2 and queued["delivered_at"] is not None
    assert receiver.bodies == [b"a=1"]


def test_notify_given_up_after_schedule(tmp_path: Path) -> None:
    store = SandboxStore(tmp_path / "s.sqlite3")
    store.queue_notify("alipay", "R1", "http://127.0.0.1:9/none", b"", {})
    sender = NotifySender(store, _rules(), time_scale=0.0)
    for _ in range(3):  # first try + two retries, all unreachable
        assert sender.deliver_once() == 1
    assert sender.deliver_once() == 0
    (queued,) = store.notifies("alipay", "R1")
    assert queued["attempts"] == 3 and queued["delivered_at"] is None
    assert queued["last_answer"].startswith("unreachable")
