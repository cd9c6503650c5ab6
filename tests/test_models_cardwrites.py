"""Loading cards exactly once: sync, write, confirm, the meter's report, torn and lost writes."""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from dataclasses import dataclass, replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.orm import Session

import cardfmt
from models import ledger
from models.accounts import Card, Meter, MeterReport
from models.base import utcnow
from models.cardwrites import (
    CardBusy,
    CardConflict,
    CardImageError,
    CardKeys,
    CardRefusedError,
    SyncResult,
    confirm_write,
    sync_card,
)
from models.credits import record_payment
from models.errors import NotFound
from models.ordering import create_order
from models.orders import CardWrite, Credit
from models.staff import AuditLog, Kiosk, SafetyCase
from models.states import CardState, CardWriteState, CaseState, CreditState
from models.tariffs import Tariff
from tests.factories import gen_account, gen_tariff, unique

HOLD = dt.timedelta(seconds=30)
NO_ALARM = cardfmt.Alarm(0)


def make_keys() -> CardKeys:
    """Fresh card keys, as the server would load them."""
    return CardKeys(
        signing_keys={1: Ed25519PrivateKey.generate()},
        signing_version=1,
        meter_master_key=bytes(range(32)),
        tag_master_key=bytes(range(32, 64)),
    )


KEYS = make_keys()


def gen_kiosk(session: Session) -> Kiosk:
    kiosk = Kiosk(name="测试自助机", client_id=unique("kiosk-"))
    session.add(kiosk)
    session.flush()
    return kiosk


def paid_credit(session: Session, meter: Meter, volume: int = 10000) -> Credit:
    """A paid order's credit for ``meter``, awaiting load, booked in the ledger."""
    branch = meter.account.branch
    tariff = session.scalar(select(Tariff).where(Tariff.branch_id == branch.id))
    tariff = tariff or gen_tariff(session, branch)
    now = utcnow()
    order = create_order(
        session,
        meter=meter,
        tariff_id=tariff.id,
        volume=volume,
        amount=volume * 3,
        quote={"parts": []},
        channel="alipay",
        now=now,
        ttl=dt.timedelta(minutes=15),
    )
    return record_payment(
        session, order, amount=order.amount, provider_trade_no=unique("T"), paid_at=now
    )


def issue_image(card: Card, keys: CardKeys = KEYS, *, card_no: str | None = None) -> bytes:
    """The image a newly issued card carries (N and pending as the server records them)."""
    header = cardfmt.Header(
        card_no=card_no or card.card_no,
        meter_no=card.meter.meter_no,
        key_version=1,
        replacement_count=card.replacement_count,
    )
    image = cardfmt.issue_card(
        header,
        issued_at=utcnow(),
        signing_key=keys.signing_key,
        key_version=keys.signing_version,
        purchase_count=card.purchase_count,
        pending_volume=card.pending_volume,
    )
    return cardfmt.encode(image)


def write_pages(raw: bytes, plan: list[tuple[int, bytes]]) -> bytes:
    """What a kiosk leaves on the tag after writing ``plan`` (all of it, or a torn prefix)."""
    memory = bytearray(raw)
    for page, data in plan:
        offset = (page - cardfmt.FIRST_PAGE) * cardfmt.PAGE_SIZE
        memory[offset : offset + cardfmt.PAGE_SIZE] = data
    return bytes(memory)


@dataclass
class MeterSim:
    """An IC-card meter: applies N = count + 1 and writes its sealed report to the card."""

    meter_no: str
    count: int = 0
    remaining: int = 0
    purchased: int = 0
    seq: int = 0

    def insert(
        self, raw: bytes, *, alarms: cardfmt.Alarm = NO_ALARM, keys: CardKeys = KEYS
    ) -> bytes:
        image = cardfmt.decode(raw, public_keys=keys.public_keys)
        current = image.current
        if current.purchase_count == self.count + 1:
            self.count = current.purchase_count
            self.remaining += current.pending_volume
            self.purchased += current.pending_volume
        self.seq += 1
        report = cardfmt.MeterReport(
            meter_no=self.meter_no,
            report_seq=self.seq,
            count_applied=self.count,
            remaining=self.remaining,
            total_used=0,
            total_purchased=self.purchased,
            valve_open=True,
            alarms=alarms,
            reported_at=utcnow().replace(microsecond=0),
        )
        sealed = cardfmt.seal_report(report, keys.meter_key(self.meter_no))
        return cardfmt.encode(replace(image, report=sealed))


@dataclass
class Setup:
    card: Card
    meter: Meter
    kiosk: Kiosk
    raw: bytes
    meter_sim: MeterSim


@pytest.fixture
def setup(db: Session) -> Setup:
    account = gen_account(db)
    meter = account.meters[0]
    card = meter.cards[0]
    return Setup(card, meter, gen_kiosk(db), issue_image(card), MeterSim(meter.meter_no))


def sync(
    db: Session, s: Setup, raw: bytes, *, kiosk: Kiosk | None = None, **kw: object
) -> SyncResult:
    fields: dict[str, object] = {
        "raw": raw,
        "tag_uid": s.card.tag_uid,
        "kiosk_id": (kiosk or s.kiosk).id,
        "keys": KEYS,
        "now": utcnow(),
        "hold": HOLD,
    }
    fields.update(kw)
    return sync_card(db, **fields)  # type: ignore[arg-type]


def write_states(db: Session) -> list[str]:
    return list(db.scalars(select(CardWrite.state).order_by(CardWrite.id)))


def test_whole_loop_paid_loaded_applied(db: Session, setup: Setup) -> None:
    credit = paid_credit(db, setup.meter, 10000)
    first = sync(db, setup, setup.raw)
    write = first.write
    assert write is not None and first.loading == 10000
    assert (write.purchase_count, write.pending_volume) == (1, 10000)
    assert len(first.tag_password or b"") == 6
    assert first.tag_password == KEYS.tag_password(setup.card.card_no, 1)
    assert credit.state == CreditState.awaiting_load
    # the new slot (B, pages 51..83) goes first: a tear leaves slot A's state
    assert first.plan and 51 <= first.plan[0][0] <= 83

    on_card = write_pages(setup.raw, first.plan)
    assert on_card == write.target_image
    result = confirm_write(
        db, write_id=write.write_id, raw=on_card, kiosk_id=setup.kiosk.id, now=utcnow()
    )
    assert not result.repeated
    assert credit.state == CreditState.loaded and credit.purchase_count == 1
    assert (setup.card.purchase_count, setup.card.pending_volume) == (1, 10000)
    assert setup.card.last_image == on_card
    assert ledger.check(db) == []

    after_meter = setup.meter_sim.insert(on_card)
    second = sync(db, setup, after_meter)
    assert second.write is None
    assert [c.id for c in second.applied] == [credit.id]
    assert credit.state == CreditState.applied
    assert setup.meter.applied_count == 1 and setup.meter.last_remaining == 10000
    assert second.report is not None and second.report.report_seq == 1
    assert ledger.check(db) == []

    # the next purchase advances N
    paid_credit(db, setup.meter, 5000)
    third = sync(db, setup, after_meter)
    assert third.write is not None
    assert (third.write.purchase_count, third.write.pending_volume) == (2, 5000)
    assert third.report is None  # the same report again is not stored twice
    assert db.scalar(select(func.count()).select_from(MeterReport)) == 1


def test_top_up_before_the_meter_stays_under_the_same_count(db: Session, setup: Setup) -> None:
    first_credit = paid_credit(db, setup.meter, 10000)
    first = sync(db, setup, setup.raw)
    assert first.write is not None
    on_card = write_pages(setup.raw, first.plan)
    confirm_write(db, write_id=first.write.write_id, raw=on_card, kiosk_id=None, now=utcnow())

    second_credit = paid_credit(db, setup.meter, 2500)
    second = sync(db, setup, on_card)
    assert second.write is not None
    assert (second.write.purchase_count, second.write.pending_volume) == (1, 12500)
    on_card = write_pages(on_card, second.plan)
    confirm_write(db, write_id=second.write.write_id, raw=on_card, kiosk_id=None, now=utcnow())
    assert second_credit.purchase_count == 1

    after_meter = setup.meter_sim.insert(on_card)
    assert setup.meter_sim.remaining == 12500
    third = sync(db, setup, after_meter)
    assert {c.id for c in third.applied} == {first_credit.id, second_credit.id}
    assert ledger.check(db) == []


def test_lost_confirm_is_completed_by_the_next_sync(db: Session, setup: Setup) -> None:
    credit = paid_credit(db, setup.meter)
    first = sync(db, setup, setup.raw)
    assert first.write is not None
    on_card = write_pages(setup.raw, first.plan)  # written, the confirm never arrives

    again = sync(db, setup, on_card, kiosk=gen_kiosk(db))
    assert again.completed is first.write and again.write is None
    assert first.write.state == CardWriteState.confirmed
    assert credit.state == CreditState.loaded
    assert setup.card.purchase_count == 1
    assert ledger.check(db) == []
    # the kiosk's late confirm still answers success, changing nothing
    late = confirm_write(
        db, write_id=first.write.write_id, raw=on_card, kiosk_id=None, now=utcnow()
    )
    assert late.repeated


def test_lost_confirm_then_meter_before_the_next_sync(db: Session, setup: Setup) -> None:
    credit = paid_credit(db, setup.meter)
    first = sync(db, setup, setup.raw)
    assert first.write is not None
    after_meter = setup.meter_sim.insert(write_pages(setup.raw, first.plan))
    again = sync(db, setup, after_meter)
    assert again.completed is first.write
    assert credit.state == CreditState.applied
    assert ledger.check(db) == []


def test_torn_write_is_issued_again_with_the_same_credits(db: Session, setup: Setup) -> None:
    credit = paid_credit(db, setup.meter)
    first = sync(db, setup, setup.raw)
    assert first.write is not None
    torn = write_pages(setup.raw, first.plan[: len(first.plan) // 2])
    assert cardfmt.decode(torn, public_keys=KEYS.public_keys).torn_slots != (False, False)

    second = sync(db, setup, torn)
    assert second.abandoned is first.write
    assert first.write.state == CardWriteState.abandoned
    assert second.write is not None and second.write.credits == [credit]
    assert credit.state == CreditState.awaiting_load
    on_card = write_pages(torn, second.plan)
    confirm_write(db, write_id=second.write.write_id, raw=on_card, kiosk_id=None, now=utcnow())
    assert credit.state == CreditState.loaded

    with pytest.raises(CardConflict) as refused:
        confirm_write(db, write_id=first.write.write_id, raw=on_card, kiosk_id=None, now=utcnow())
    assert refused.value.code == "write_abandoned"
    assert ledger.check(db) == []


def test_another_kiosk_waits_while_a_write_may_be_in_progress(db: Session, setup: Setup) -> None:
    paid_credit(db, setup.meter)
    now = utcnow()
    first = sync(db, setup, setup.raw, now=now)
    assert first.write is not None
    other = gen_kiosk(db)
    with pytest.raises(CardBusy):
        sync(db, setup, setup.raw, kiosk=other, now=now + dt.timedelta(seconds=5))
    assert first.write.state == CardWriteState.issued
    later = sync(db, setup, setup.raw, kiosk=other, now=now + HOLD)
    assert later.abandoned is first.write and later.write is not None
    assert later.write.kiosk_id == other.id
    assert write_states(db) == ["abandoned", "issued"]


def test_confirm_with_another_image_changes_nothing(db: Session, setup: Setup) -> None:
    credit = paid_credit(db, setup.meter)
    first = sync(db, setup, setup.raw)
    assert first.write is not None
    torn = write_pages(setup.raw, first.plan[:3])
    with pytest.raises(CardConflict) as refused:
        confirm_write(db, write_id=first.write.write_id, raw=torn, kiosk_id=None, now=utcnow())
    assert refused.value.code == "readback_mismatch"
    assert first.write.state == CardWriteState.issued
    assert credit.state == CreditState.awaiting_load
    assert setup.card.purchase_count == 0
    with pytest.raises(NotFound):
        confirm_write(db, write_id="nope", raw=torn, kiosk_id=None, now=utcnow())


def test_card_showing_neither_state_is_refused(db: Session, setup: Setup) -> None:
    paid_credit(db, setup.meter)
    first = sync(db, setup, setup.raw)
    assert first.write is not None
    # a different image for the same card at the same count: neither base nor target
    stray = cardfmt.next_purchase(
        cardfmt.decode(setup.raw, public_keys=KEYS.public_keys),
        add_volume=1,
        issued_at=utcnow(),
        signing_key=KEYS.signing_key,
        key_version=1,
    )
    with pytest.raises(CardConflict) as refused:
        sync(db, setup, cardfmt.encode(stray))
    assert refused.value.code == "card_state_unknown"


def test_restored_old_image_is_out_of_sync(db: Session, setup: Setup) -> None:
    paid_credit(db, setup.meter)
    first = sync(db, setup, setup.raw)
    assert first.write is not None
    on_card = write_pages(setup.raw, first.plan)
    confirm_write(db, write_id=first.write.write_id, raw=on_card, kiosk_id=None, now=utcnow())
    paid_credit(db, setup.meter)
    with pytest.raises(CardConflict) as refused:
        sync(db, setup, setup.raw)  # the image from before the load, copied back
    assert refused.value.code == "card_out_of_sync"


@pytest.mark.parametrize(
    ("state", "code"),
    [
        (CardState.blacklisted, "card_blacklisted"),
        (CardState.lost, "card_lost"),
        (CardState.replaced, "card_replaced"),
    ],
)
def test_refused_cards(db: Session, setup: Setup, state: CardState, code: str) -> None:
    paid_credit(db, setup.meter)
    setup.card.transition_to(state)
    with pytest.raises(CardRefusedError) as refused:
        sync(db, setup, setup.raw)
    assert refused.value.code == code
    assert write_states(db) == []


def test_unknown_card_and_foreign_tag(db: Session, setup: Setup) -> None:
    with pytest.raises(CardRefusedError) as refused:
        sync(db, setup, setup.raw, tag_uid="04aabbccddeeff")
    assert refused.value.code == "tag_uid_mismatch"
    with pytest.raises(CardRefusedError) as refused:
        sync(db, setup, issue_image(setup.card, card_no="C-NOBODY"))
    assert refused.value.code == "unknown_card"


def _with_crc(block: bytes) -> bytes:
    return block[:-4] + zlib.crc32(block[:-4]).to_bytes(4, "big")


def test_forged_and_foreign_images_are_refused(db: Session, setup: Setup) -> None:
    paid_credit(db, setup.meter)
    # a slot with more gas and a good CRC but the old signature
    slot = bytearray(setup.raw[56:188])
    struct.pack_into(">I", slot, 8, 999999)
    forged = setup.raw[:56] + _with_crc(bytes(slot)) + setup.raw[188:]
    # a card signed by someone else's key
    foreign_keys = make_keys()
    foreign = issue_image(setup.card, foreign_keys)
    # a report sealed under another meter master key
    other_meter_key = replace(KEYS, meter_master_key=b"\x07" * 32)
    bad_report = setup.meter_sim.insert(setup.raw, keys=other_meter_key)
    for raw, code, reason in (
        (forged, "card_refused", "bad_signature"),
        (foreign, "card_refused", "bad_signature"),
        (bad_report, "card_refused", "report_mac"),
        (b"\x00" * 504, "card_unreadable", "bad_magic"),
        (setup.raw[:500], "card_unreadable", "wrong_length"),
    ):
        with pytest.raises(CardImageError) as refused:
            sync(db, setup, raw)
        assert (refused.value.code, refused.value.detail["reason"]) == (code, reason)
    assert write_states(db) == []


def test_leak_alarm_opens_one_case(db: Session, setup: Setup) -> None:
    leaking = setup.meter_sim.insert(setup.raw, alarms=cardfmt.Alarm.LEAK)
    first = sync(db, setup, leaking)
    assert [case.kind for case in first.cases] == ["leak"]
    assert first.report is not None and first.report.alarms == "leak"
    again = sync(
        db, setup, setup.meter_sim.insert(leaking, alarms=cardfmt.Alarm.LEAK | cardfmt.Alarm.TAMPER)
    )
    assert [case.kind for case in again.cases] == ["tamper"]
    cases = db.scalars(select(SafetyCase).order_by(SafetyCase.id)).all()
    assert [(c.kind, c.meter_id) for c in cases] == [
        ("leak", setup.meter.id),
        ("tamper", setup.meter.id),
    ]
    # staff close the leak case; a new leak report opens a new one
    cases[0].transition_to(CaseState.closed)
    third = sync(db, setup, setup.meter_sim.insert(leaking, alarms=cardfmt.Alarm.LEAK))
    assert [case.kind for case in third.cases] == ["leak"]
    assert db.scalar(select(func.count()).select_from(MeterReport)) == 3


def test_another_kiosk_may_confirm_and_staff_see_it(db: Session, setup: Setup) -> None:
    credit = paid_credit(db, setup.meter)
    first = sync(db, setup, setup.raw)
    assert first.write is not None
    on_card = write_pages(setup.raw, first.plan)
    other = gen_kiosk(db)
    confirm_write(db, write_id=first.write.write_id, raw=on_card, kiosk_id=other.id, now=utcnow())
    assert credit.state == CreditState.loaded
    entries = db.scalars(select(AuditLog).where(AuditLog.actor == f"kiosk:{other.id}")).all()
    assert [entry.action for entry in entries] == ["card_write.confirmed_for_other_kiosk"]
