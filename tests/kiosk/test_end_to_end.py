"""The whole loop end to end: pay → tap → load → meter → tap → applied, and its faults.

The real Flask app is served on loopback over HTTP with a database that commits;
the kiosk is :class:`kiosk.client.Kiosk` (the reader loop over the HTTP client)
talking to a virtual NTAG215 through nfcpy's real udp driver; the card was issued
with an image signed by the server's key and protected with the server's tag
password; the meter simulator holds the report key derived from the server's
meter master key. Every fault ends with the same sum: gas the meter took + gas on
the card it has not taken + credits still to load = gas paid, and after settling,
every credit applied exactly once and the ledger balanced.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

import cardfmt
from kiosk.cardio import connect_tag, open_reader, provision_card
from kiosk.client import (
    ConfirmAnswer,
    Kiosk,
    KioskClient,
    Outcome,
    ServerUnreachable,
    TapOutcome,
)
from kiosk.meter_sim import MeterSimulator
from kiosk.meter_sim import Outcome as MeterOutcome
from kiosk.virtual_card import PullMode, VirtualField, VirtualNtag215, pull_on_write, uid_for
from models import ledger, migrate
from models.accounts import Card
from models.cardwrites import CardKeys
from models.orders import CardWrite, Credit
from models.staff import Kiosk as KioskRow
from models.states import CardState, CardWriteState, CreditState
from portal import create_app
from portal import db as portal_db
from portal.card_keys import card_keys
from portal.db import make_engine
from portal.kiosk_auth import new_credentials
from tests.factories import gen_account
from tests.http_server import serve
from tests.test_models_cardwrites import issue_image, paid_credit

_serials = itertools.count(1000)
_databases = itertools.count()


@pytest.fixture(scope="module")
def loop_engine(engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """A committing database for this module (the served app and the test both write to it)."""
    if engine.dialect.name != "postgresql":
        eng = make_engine(f"sqlite:///{tmp_path_factory.mktemp('loop') / 'loop.sqlite3'}")
        migrate.upgrade(eng)
        yield eng
        eng.dispose()
        return
    name = f"ranqi_kiosk_loop_{os.getpid()}_{next(_databases)}"
    admin = make_engine(engine.url.render_as_string(hide_password=False)).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    eng = make_engine(engine.url.set(database=name).render_as_string(hide_password=False))
    try:
        migrate.upgrade(eng)
        yield eng
    finally:
        eng.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass(frozen=True)
class Server:
    """The real app served on loopback, its card keys and one registered kiosk."""

    app: Flask
    url: str
    engine: Engine
    keys: CardKeys
    client_id: str
    client_secret: str


def register_kiosk(engine: Engine, name: str = "测试自助机") -> tuple[str, str]:
    """A kiosk row with fresh client credentials; returns (client_id, client_secret)."""
    client_id, secret, secret_hash = new_credentials()
    with Session(engine) as s:
        s.add(
            KioskRow(
                name=name, location="测试路1号", client_id=client_id, client_secret_hash=secret_hash
            )
        )
        s.commit()
    return client_id, secret


@pytest.fixture(scope="module")
def server(loop_engine: Engine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    app = create_app(
        {
            "DATABASE_URL": loop_engine.url.render_as_string(hide_password=False),
            "INSTANCE_PATH": tmp_path_factory.mktemp("instance"),
        }
    )
    client_id, secret = register_kiosk(loop_engine)
    with serve(app) as url:
        yield Server(app, url, loop_engine, card_keys(app), client_id, secret)
    portal_db.database(app).engine.dispose()


@dataclass
class Loop:
    """One resident's card and meter, a kiosk's reader field, and the server behind them."""

    server: Server
    field: VirtualField
    card: VirtualNtag215
    card_no: str
    meter: MeterSimulator
    kiosk: Kiosk
    meter_id: int

    @property
    def image(self) -> bytes:
        return self.card.user_memory

    def pay(self, volume: int) -> None:
        """A paid order for the meter: its credit awaits load."""
        with Session(self.server.engine) as s:
            meter = s.get(Card, self._card_id(s)).meter  # type: ignore[union-attr]
            paid_credit(s, meter, volume)
            s.commit()

    def _card_id(self, s: Session) -> int:
        card_id = s.scalar(select(Card.id).where(Card.card_no == self.card_no))
        assert card_id is not None
        return card_id

    def tap(self, kiosk: Kiosk | None = None) -> TapOutcome:
        """Hold the card on the reader for one tap, then take it away."""
        self.field.put(self.card)
        try:
            return (kiosk or self.kiosk).tap()
        finally:
            self.field.take()

    def insert(self, card: bytes | None = None) -> MeterOutcome:
        """Put the card (or a copy of it) into the meter; the meter writes its report on it."""
        after, result = self.meter.insert(self.image if card is None else card)
        if card is None:
            self.card.memory[16:520] = after
        return result.outcome

    def credits(self) -> list[tuple[int, str]]:
        with Session(self.server.engine) as s:
            return [
                (volume, state)
                for volume, state in s.execute(
                    select(Credit.volume, Credit.state)
                    .where(Credit.meter_id == self.meter_id)
                    .order_by(Credit.id)
                )
            ]

    def paid(self) -> int:
        return sum(volume for volume, _ in self.credits())

    def assert_no_gas_lost_or_doubled(self) -> None:
        """Meter's gas + the card's gas it has not taken + credits to load = gas paid."""
        image = cardfmt.decode(self.image, public_keys=self.server.keys.public_keys)
        current = image.current
        if current.purchase_count == self.meter.purchase_count + 1:
            on_card = current.pending_volume
        elif current.purchase_count == self.meter.purchase_count:
            on_card = current.pending_volume - self.meter.applied_under_count
        else:
            on_card = 0
        with Session(self.server.engine) as s:
            to_load = sum(
                s.scalars(
                    select(Credit.volume).where(
                        Credit.meter_id == self.meter_id,
                        Credit.state == CreditState.awaiting_load.value,
                    )
                )
            )
            # an unconfirmed write the card already carries: its credits are on the card
            for write in s.scalars(
                select(CardWrite).where(
                    CardWrite.card_id == self._card_id(s),
                    CardWrite.state == CardWriteState.issued.value,
                )
            ):
                target = cardfmt.decode(
                    write.target_image, public_keys=self.server.keys.public_keys
                )
                if target.current == current:
                    to_load -= sum(credit.volume for credit in write.credits)
            assert ledger.check(s) == []
        assert on_card >= 0 and to_load >= 0
        assert self.meter.total_purchased + on_card + to_load == self.paid(), (
            self.meter.total_purchased,
            on_card,
            to_load,
            self.credits(),
        )

    def settle(self) -> None:
        """Tap until loaded, use the meter, tap again: every credit applied exactly once."""
        for _ in range(3):
            outcome = self.tap()
            if outcome.outcome in (Outcome.LOADED, Outcome.UP_TO_DATE):
                break
        else:
            raise AssertionError(f"the card never loaded: {outcome}")
        self.assert_no_gas_lost_or_doubled()
        self.insert()
        final = self.tap()
        assert final.outcome is Outcome.UP_TO_DATE, final
        assert final.pending_on_card == 0
        assert final.meter_applied_count == self.meter.purchase_count
        assert {state for _, state in self.credits()} == {CreditState.applied.value}
        assert self.meter.total_purchased == self.paid()
        self.assert_no_gas_lost_or_doubled()


def kiosk_client(server: Server, **kwargs: Any) -> KioskClient:
    return KioskClient(server.url, server.client_id, server.client_secret, **kwargs)


def make_loop(
    server: Server,
    field: VirtualField,
    *,
    client: KioskClient | None = None,
    password: bytes | None = None,
) -> Loop:
    """A new account with a card issued onto a fresh virtual NTAG215, and its meter."""
    uid = uid_for(next(_serials))
    with Session(server.engine) as s:
        card_row = gen_account(s).meters[0].cards[0]
        card_row.tag_uid = uid.hex()
        s.commit()
        card_no, meter_no = card_row.card_no, card_row.meter.meter_no
        meter_id, raw = card_row.meter_id, issue_image(card_row, server.keys)
    card = VirtualNtag215(uid)
    field.put(card)
    clf = open_reader(field.port)
    try:
        provision_card(connect_tag(clf), raw, password or server.keys.tag_password(card_no, 1))
    finally:
        clf.close()
        field.take()
    meter = MeterSimulator.new(
        meter_no,
        master_key=server.keys.meter_master_key,
        public_keys=server.keys.public_keys,
        capacity=99999,
    )
    kiosk = Kiosk(client or kiosk_client(server), lambda: open_reader(field.port), wait=2.0)
    return Loop(server, field, card, card_no, meter, kiosk, meter_id)


@pytest.fixture
def field() -> Iterator[VirtualField]:
    with VirtualField() as running:
        yield running


@pytest.fixture
def loop(server: Server, field: VirtualField) -> Loop:
    return make_loop(server, field)


def writes_seen(field: VirtualField) -> int:
    return field.stats.by_command["WRITE"]


def test_pay_tap_meter_tap_applied(loop: Loop) -> None:
    loop.pay(12345)
    loaded = loop.tap()
    assert loaded.outcome is Outcome.LOADED, loaded
    assert loaded.loaded == 12345 and loaded.pending_on_card == 12345
    assert loaded.purchase_count == 1 and loaded.pages_written > 0
    assert loaded.card_no == loop.card_no and loaded.meter_no == loop.meter.meter_no
    assert loaded.uid == loop.card.uid.hex()
    assert loop.credits() == [(12345, CreditState.loaded.value)]
    loop.assert_no_gas_lost_or_doubled()

    assert loop.insert() is MeterOutcome.APPLIED
    assert loop.meter.remaining == 12345
    loop.assert_no_gas_lost_or_doubled()
    reported = loop.tap()
    assert reported.outcome is Outcome.UP_TO_DATE, reported
    assert reported.applied_volume == 12345 and reported.pending_on_card == 0
    assert (reported.meter_applied_count, reported.meter_remaining) == (1, 12345)
    assert loop.credits() == [(12345, CreditState.applied.value)]

    # a second purchase advances N; the next report applies it too
    loop.pay(500)
    again = loop.tap()
    assert (again.outcome, again.loaded, again.purchase_count) == (Outcome.LOADED, 500, 2)
    loop.settle()


def test_top_up_before_the_meter_stays_under_the_same_count(loop: Loop) -> None:
    loop.pay(1000)
    assert loop.tap().outcome is Outcome.LOADED
    loop.pay(234)
    topped = loop.tap()
    assert (topped.outcome, topped.loaded) == (Outcome.LOADED, 234)
    assert (topped.purchase_count, topped.pending_on_card) == (1, 1234)
    loop.settle()
    assert loop.meter.total_purchased == 1234


# the first load after issue writes this many pages (the numbers have the factories' length)
_HEADER = cardfmt.Header(card_no="C000001", meter_no="M000001", key_version=1)


def _first_load_writes() -> int:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    now = dt.datetime(2026, 12, 4, tzinfo=dt.UTC)
    issued = cardfmt.issue_card(_HEADER, issued_at=now, signing_key=key, key_version=1)
    loaded = cardfmt.next_purchase(
        issued, add_volume=1000, issued_at=now, signing_key=key, key_version=1
    )
    return len(cardfmt.plan_write(cardfmt.encode(issued), cardfmt.encode(loaded)))


FIRST_LOAD_WRITES = _first_load_writes()
MODES = (PullMode.BEFORE, PullMode.AFTER, PullMode.GARBLED)


@pytest.mark.parametrize("number", range(1, FIRST_LOAD_WRITES + 1))
def test_card_pulled_at_each_write_of_a_load(loop: Loop, number: int) -> None:
    """Pulled during the n-th WRITE (each mode in turn): nothing confirmed, then it settles."""
    loop.pay(4321)
    mode = MODES[number % len(MODES)]
    loop.field.pull_when(pull_on_write(number), mode)
    torn = loop.tap()
    assert loop.field.pulled is loop.card, "the pull did not happen: the plan is shorter"
    assert torn.outcome is Outcome.CARD_FAILED, torn
    assert torn.loaded == 0
    # the card reads as the old state or the new one, never anything else
    shown = cardfmt.decode(loop.image, public_keys=loop.server.keys.public_keys).current
    assert (shown.purchase_count, shown.pending_volume) in {(0, 0), (1, 4321)}
    assert loop.credits() == [(4321, CreditState.awaiting_load.value)]
    loop.assert_no_gas_lost_or_doubled()
    loop.settle()


class LosingClient(KioskClient):
    """A kiosk that loses its first confirm: the server's answer, or the kiosk dies first."""

    def __init__(self, *args: Any, answer_sent: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answer_sent = answer_sent
        self.lost = False

    def confirm_write(self, write_id: str, image: bytes) -> ConfirmAnswer:
        if not self.lost:
            self.lost = True
            if self.answer_sent:
                super().confirm_write(write_id, image)
            raise ServerUnreachable("the confirm was lost")
        return super().confirm_write(write_id, image)


class ShutdownBeforeConfirm(KioskClient):
    """A kiosk whose server goes down between the write and the confirm."""

    def __init__(self, *args: Any, shutdown: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.shutdown = shutdown

    def confirm_write(self, write_id: str, image: bytes) -> ConfirmAnswer:
        self.shutdown()
        return super().confirm_write(write_id, image)


@pytest.mark.parametrize("answer_sent", [True, False], ids=["answer_lost", "kiosk_died_first"])
def test_lost_confirm_is_completed_by_the_next_tap(
    server: Server, field: VirtualField, answer_sent: bool
) -> None:
    client = LosingClient(
        server.url, server.client_id, server.client_secret, answer_sent=answer_sent
    )
    loop = make_loop(server, field, client=client)
    loop.pay(2000)
    unconfirmed = loop.tap()
    assert unconfirmed.outcome is Outcome.UNCONFIRMED, unconfirmed
    want = CreditState.loaded if answer_sent else CreditState.awaiting_load
    assert loop.credits() == [(2000, want.value)]
    loop.assert_no_gas_lost_or_doubled()

    # the next tap, from another kiosk even, finds the target on the card: loaded, once
    other = Kiosk(kiosk_client(server), lambda: open_reader(field.port), wait=2.0)
    settled = loop.tap(other)
    assert settled.outcome is Outcome.UP_TO_DATE, settled
    assert (settled.purchase_count, settled.pending_on_card) == (1, 2000)
    assert loop.credits() == [(2000, CreditState.loaded.value)]
    loop.settle()


def test_server_down_between_write_and_confirm(server: Server, field: VirtualField) -> None:
    with ExitStack() as stack:
        url = stack.enter_context(serve(server.app))  # this kiosk's own server, to stop
        client = ShutdownBeforeConfirm(
            url, server.client_id, server.client_secret, shutdown=stack.close, timeout=2.0
        )
        loop = make_loop(server, field, client=client)
        loop.pay(777)
        written = loop.tap()
    assert written.outcome is Outcome.UNCONFIRMED, written
    assert written.pages_written > 0
    assert loop.credits() == [(777, CreditState.awaiting_load.value)]
    loop.assert_no_gas_lost_or_doubled()
    # the server is still down: the next tap says so and writes nothing
    writes_before = writes_seen(field)
    offline = loop.tap()
    assert offline.outcome is Outcome.OFFLINE and "Nothing was written" in offline.message
    assert writes_seen(field) == writes_before

    loop.kiosk = Kiosk(kiosk_client(server), lambda: open_reader(field.port), wait=2.0)
    loop.settle()


def test_server_unreachable_no_write_reaches_the_card(loop: Loop) -> None:
    loop.pay(1500)
    with serve(loop.server.app) as url:
        pass  # a port that just closed: nothing listens there
    client = KioskClient(url, loop.server.client_id, loop.server.client_secret, timeout=2.0)
    loop.kiosk = Kiosk(client, lambda: open_reader(loop.field.port), wait=2.0)
    before = loop.image
    loop.field.stats.reset()
    offline = loop.tap()
    assert offline.outcome is Outcome.OFFLINE, offline
    assert writes_seen(loop.field) == 0 and loop.field.stats.by_command["PWD_AUTH"] == 0
    assert loop.image == before
    assert loop.credits() == [(1500, CreditState.awaiting_load.value)]
    loop.kiosk = Kiosk(kiosk_client(loop.server), lambda: open_reader(loop.field.port))
    loop.settle()


def test_two_kiosks_one_card_at_once(server: Server) -> None:
    """The same card (a copy, same UID) on two kiosks at the same moment: one load, once."""
    with VirtualField() as field_a, VirtualField() as field_b:
        loop = make_loop(server, field_a)
        loop.pay(3000)
        twin = VirtualNtag215(memory=bytes(loop.card.memory))
        other_id, other_secret = register_kiosk(server.engine, "二号机")
        kiosk_b = Kiosk(
            KioskClient(server.url, other_id, other_secret), lambda: open_reader(field_b.port)
        )
        # tokens first: on SQLite a token issued while another kiosk's sync holds the
        # database's write lock fails with "database is locked" (portal/kiosk_auth.py)
        loop.kiosk.client.token()
        kiosk_b.client.token()
        field_a.put(loop.card)
        field_b.put(twin)
        barrier = threading.Barrier(2)
        outcomes: dict[str, TapOutcome] = {}

        def tap(name: str, kiosk: Kiosk) -> None:
            barrier.wait()
            outcomes[name] = kiosk.tap()

        threads = [
            threading.Thread(target=tap, args=("a", loop.kiosk)),
            threading.Thread(target=tap, args=("b", kiosk_b)),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        field_a.take()
        field_b.take()
        kinds = sorted(o.outcome.value for o in outcomes.values())
        assert kinds.count(Outcome.LOADED.value) == 1, outcomes
        loser = next(o for o in outcomes.values() if o.outcome is not Outcome.LOADED)
        assert loser.outcome in (Outcome.BUSY, Outcome.REFUSED), loser
        assert loser.code in ("card_busy", "card_out_of_sync")
        # the card that holds the gas carries on; the other copy is just an old card
        if outcomes["b"].outcome is Outcome.LOADED:
            loop.card, loop.kiosk = twin, kiosk_b
            loop.field = field_b
        assert loop.credits() == [(3000, CreditState.loaded.value)]
        loop.assert_no_gas_lost_or_doubled()
        loop.settle()


def test_cloned_old_card_replayed_into_the_meter(loop: Loop) -> None:
    issued = loop.image
    loop.pay(5000)
    assert loop.tap().outcome is Outcome.LOADED
    loaded = loop.image
    assert loop.insert() is MeterOutcome.APPLIED
    # copies from before and after the load, inserted again: no gas
    assert loop.insert(loaded) is MeterOutcome.NOTHING_NEW
    assert loop.insert(issued) is MeterOutcome.NOTHING_NEW
    assert loop.meter.total_purchased == 5000
    # the meter's reports went onto the copies, not the card: the card still carries N=1
    loop.assert_no_gas_lost_or_doubled()
    assert loop.tap().applied_volume == 5000

    # the old image copied back onto the card: refused by the server, nothing written
    loop.pay(100)
    real = loop.image
    loop.card.memory[16:520] = issued
    loop.field.stats.reset()
    refused = loop.tap()
    assert (refused.outcome, refused.code) == (Outcome.REFUSED, "card_out_of_sync")
    assert writes_seen(loop.field) == 0 and loop.image == issued
    loop.card.memory[16:520] = real
    loop.settle()
    assert loop.meter.total_purchased == 5100


def test_wrong_tag_password_writes_nothing(server: Server, field: VirtualField) -> None:
    loop = make_loop(server, field, password=bytes.fromhex("0badc0ffee00"))
    loop.pay(900)
    before = loop.image
    field.stats.reset()
    failed = loop.tap()
    assert failed.outcome is Outcome.CARD_FAILED, failed
    assert field.stats.by_command["PWD_AUTH"] == 1 and writes_seen(field) == 0
    assert loop.image == before
    assert loop.credits() == [(900, CreditState.awaiting_load.value)]
    loop.assert_no_gas_lost_or_doubled()


def test_blacklisted_card_is_refused_with_nothing_written(loop: Loop) -> None:
    loop.pay(800)
    with Session(loop.server.engine) as s:
        card = s.scalar(select(Card).where(Card.card_no == loop.card_no))
        assert card is not None
        card.transition_to(CardState.blacklisted)
        s.commit()
    before = loop.image
    loop.field.stats.reset()
    refused = loop.tap()
    assert (refused.outcome, refused.code) == (Outcome.REFUSED, "card_blacklisted")
    assert "blocked" in refused.message
    assert writes_seen(loop.field) == 0 and loop.image == before
    assert loop.credits() == [(800, CreditState.awaiting_load.value)]
    loop.assert_no_gas_lost_or_doubled()
    with Session(loop.server.engine) as s:
        assert s.scalar(select(CardWrite.id).join(Card).where(Card.card_no == loop.card_no)) is None


def test_whoami_over_http(server: Server) -> None:
    me = kiosk_client(server).whoami()
    assert me["client_id"] == server.client_id and me["name"] == "测试自助机"
