"""The gas meter simulator: purchase count rule, capacity, valve, alarms and its signed report."""

from __future__ import annotations

import datetime as dt
import zlib
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cardfmt
from cardfmt import Alarm, CardRefused, Header, ReportStatus
from cardfmt.image import SLOT_OFFSETS, SLOT_SIZE
from kiosk.meter_sim import MeterSimulator, Outcome, ValveReason

SERVER_KEY = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
FOREIGN_KEY = Ed25519PrivateKey.from_private_bytes(bytes([66]) * 32)
PUBLIC_KEYS = {1: SERVER_KEY.public_key()}
MASTER_KEY = b"meter master key for the tests.."
METER_NO = "M2026000001"
T0 = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC)


def make_meter(**state: Any) -> MeterSimulator:
    state.setdefault("capacity", 100_000)  # 1000 m³
    return MeterSimulator.new(
        METER_NO, master_key=MASTER_KEY, public_keys=PUBLIC_KEYS, clock=lambda: T0, **state
    )


def issued(meter_no: str = METER_NO, replacement_count: int = 0) -> bytes:
    header = Header(
        card_no="C2026000001",
        meter_no=meter_no,
        key_version=1,
        replacement_count=replacement_count,
    )
    image = cardfmt.issue_card(header, issued_at=T0, signing_key=SERVER_KEY, key_version=1)
    return cardfmt.encode(image)


def loaded(card: bytes, volume: int, *, known_applied_count: int = 0) -> bytes:
    """What the server signs and the kiosk writes: the card after a paid load."""
    image = cardfmt.decode(card, public_keys=PUBLIC_KEYS, meter_key=key())
    after = cardfmt.next_purchase(
        image,
        add_volume=volume,
        issued_at=T0,
        signing_key=SERVER_KEY,
        key_version=1,
        known_applied_count=known_applied_count,
    )
    return cardfmt.encode(after)


def key() -> bytes:
    return cardfmt.derive_meter_key(MASTER_KEY, METER_NO)


def report_of(card: bytes) -> cardfmt.MeterReport:
    image = cardfmt.decode(card, public_keys=PUBLIC_KEYS, meter_key=key())
    assert image.report_status is ReportStatus.VERIFIED and image.report is not None
    return image.report


def test_load_is_applied_once_and_reported() -> None:
    meter = make_meter()
    card, result = meter.insert(loaded(issued(), 2_000))
    assert (result.outcome, result.applied_volume) == (Outcome.APPLIED, 2_000)
    assert (meter.purchase_count, meter.remaining, meter.total_purchased) == (1, 2_000, 2_000)
    report = report_of(card)
    assert (report.count_applied, report.remaining, report.total_purchased) == (1, 2_000, 2_000)
    assert report.valve_open and report.report_seq == 1

    again, result = meter.insert(card)
    assert result.outcome is Outcome.NOTHING_NEW and meter.remaining == 2_000
    assert report_of(again).report_seq == 2


def test_first_insert_of_a_new_card_adds_nothing() -> None:
    meter = make_meter()
    card, result = meter.insert(issued())
    assert result.outcome is Outcome.NOTHING_NEW
    assert report_of(card).count_applied == 0 and not report_of(card).valve_open


def test_replayed_old_image_adds_no_gas() -> None:
    meter = make_meter()
    first = loaded(issued(), 1_000)
    clone = first  # copied before it went into the meter
    card, _ = meter.insert(first)
    second = loaded(card, 500)  # the meter's report made N advance to 2
    card, result = meter.insert(second)
    assert result.outcome is Outcome.APPLIED and meter.remaining == 1_500
    for replay in (clone, first, second, card):
        _, result = meter.insert(replay)
        assert result.outcome in (Outcome.NOTHING_NEW, Outcome.OUT_OF_SEQUENCE)
        assert result.applied_volume == 0
    assert meter.remaining == 1_500 and meter.total_purchased == 1_500


def test_clone_taken_before_a_top_up_under_the_same_count_adds_nothing() -> None:
    meter = make_meter()
    first = loaded(issued(), 1_000)  # N = 1, not yet in the meter
    topped = loaded(first, 300)  # still N = 1, pending 1 300
    assert cardfmt.decode(topped, public_keys=PUBLIC_KEYS).current.purchase_count == 1
    _, result = meter.insert(topped)
    assert result.applied_volume == 1_300
    _, result = meter.insert(first)
    assert result.applied_volume == 0 and meter.remaining == 1_300


def test_top_up_after_a_torn_report_takes_only_the_difference() -> None:
    meter = make_meter()
    first = loaded(issued(), 1_000)
    meter.insert(first)  # applied, but the card was pulled before the report landed
    topped = loaded(first, 400)  # server still thinks N = 1 is pending: same N, 1 400
    card, result = meter.insert(topped)
    assert (result.outcome, result.applied_volume) == (Outcome.APPLIED, 400)
    assert meter.remaining == 1_400 and report_of(card).count_applied == 1
    _, result = meter.insert(topped)
    assert result.applied_volume == 0


def test_over_capacity_is_refused_whole_and_stays_on_the_card() -> None:
    meter = make_meter(capacity=1_500)
    card, _ = meter.insert(loaded(issued(), 1_000))
    big = loaded(card, 800)
    after, result = meter.insert(big)
    assert (result.outcome, result.applied_volume) == (Outcome.OVER_CAPACITY, 0)
    assert meter.remaining == 1_000 and meter.purchase_count == 1
    kept = cardfmt.decode(after, public_keys=PUBLIC_KEYS, meter_key=key())
    assert kept.current.purchase_count == 2 and kept.current.pending_volume == 800
    assert kept.report is not None and kept.report.count_applied == 1

    assert meter.burn(400) == 400
    _, result = meter.insert(after)
    assert (result.outcome, result.applied_volume) == (Outcome.APPLIED, 800)
    assert meter.remaining == 1_400


def test_valve_closes_at_zero_and_opens_on_the_next_load() -> None:
    meter = make_meter()
    card, _ = meter.insert(loaded(issued(), 300))
    assert meter.burn(200) == 200 and meter.valve_open
    assert meter.burn(500) == 100  # only what was left
    assert not meter.valve_open and meter.valve_closed_for is ValveReason.NO_GAS
    assert meter.burn(50) == 0 and meter.total_used == 300
    card, _ = meter.insert(card)
    assert not report_of(card).valve_open and report_of(card).remaining == 0
    card, result = meter.insert(loaded(card, 700))
    assert result.outcome is Outcome.APPLIED and meter.valve_open
    assert report_of(card).valve_open and report_of(card).total_used == 300


def test_leak_alarm_closes_the_valve_and_is_reported() -> None:
    meter = make_meter()
    card, _ = meter.insert(loaded(issued(), 1_000))
    meter.raise_alarm("leak")
    meter.raise_alarm("low_battery")
    assert not meter.valve_open and meter.burn(10) == 0
    card, _ = meter.insert(loaded(card, 100))  # gas is added, the valve stays shut
    report = report_of(card)
    assert report.alarms == Alarm.LEAK | Alarm.LOW_BATTERY and not report.valve_open
    assert report.remaining == 1_100
    meter.clear_alarm("leak")
    assert meter.valve_open
    meter.raise_alarm("tamper")
    assert meter.valve_open and Alarm.TAMPER in meter.alarms
    with pytest.raises(ValueError, match="unknown alarm"):
        meter.raise_alarm("fire")


def test_report_mac_verifies_only_with_the_meters_derived_key() -> None:
    meter = make_meter()
    card, _ = meter.insert(loaded(issued(), 1_000))
    assert report_of(card).count_applied == 1
    other = cardfmt.derive_meter_key(MASTER_KEY, "M2026000002")
    with pytest.raises(CardRefused):
        cardfmt.decode(card, public_keys=PUBLIC_KEYS, meter_key=other)


def _resign_slot(card: bytes, index: int, signing_key: Ed25519PrivateKey, **changes: Any) -> bytes:
    image = cardfmt.decode(card, public_keys=PUBLIC_KEYS)
    slot = image.slots[index]
    assert slot is not None
    forged = cardfmt.sign_purchase(
        cardfmt.Purchase(**{**slot.__dict__, "signature": b"", **changes}), signing_key
    )
    start = SLOT_OFFSETS[index]
    body = forged.body() + forged.signature
    block = body + zlib.crc32(body).to_bytes(4, "big")
    assert len(block) == SLOT_SIZE
    return card[:start] + block + card[start + SLOT_SIZE :]


def test_forged_or_resigned_slot_is_refused_and_the_card_left_alone() -> None:
    meter = make_meter()
    card = loaded(issued(), 1_000)
    # a kiosk (or anyone) bumping the volume cannot produce the server's signature
    body_offset = SLOT_OFFSETS[1] + 8
    tampered = bytearray(card)
    tampered[body_offset : body_offset + 4] = (99_999).to_bytes(4, "big")
    crc_end = SLOT_OFFSETS[1] + SLOT_SIZE
    tampered[crc_end - 4 : crc_end] = zlib.crc32(tampered[SLOT_OFFSETS[1] : crc_end - 4]).to_bytes(
        4, "big"
    )
    resigned = _resign_slot(card, 1, FOREIGN_KEY, pending_volume=99_999)
    for forged in (bytes(tampered), resigned):
        after, result = meter.insert(forged)
        assert result.outcome is Outcome.REFUSED and after == forged
    assert meter.remaining == 0 and meter.report_seq == 0


def test_another_meters_card_and_a_replaced_card_are_refused() -> None:
    meter = make_meter()
    _, result = meter.insert(loaded(issued(meter_no="M2026000002"), 1_000))
    assert result.outcome is Outcome.REFUSED and "M2026000002" in result.detail
    meter.insert(issued(replacement_count=1))
    _, result = meter.insert(loaded(issued(replacement_count=0), 1_000))
    assert result.outcome is Outcome.REFUSED and meter.remaining == 0


def test_skipped_purchase_count_is_out_of_sequence() -> None:
    meter = make_meter()
    card, _ = meter.insert(loaded(issued(), 100))
    # N = 2 is loaded but never reaches the meter; a server that wrongly believes it
    # applied signs N = 3, which the meter must not take before N = 2
    skipped = loaded(loaded(card, 100), 100, known_applied_count=2)
    assert cardfmt.decode(skipped, public_keys=PUBLIC_KEYS).current.purchase_count == 3
    _, result = meter.insert(skipped)
    assert result.outcome is Outcome.OUT_OF_SEQUENCE and meter.remaining == 100


def test_burn_takes_integer_volumes_only() -> None:
    meter = make_meter()
    with pytest.raises(ValueError, match="integer"):
        meter.burn(1.5)  # type: ignore[arg-type]
