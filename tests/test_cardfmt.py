"""The card image: layout, codec errors, keys, the purchase rules and the write plan."""

from __future__ import annotations

import datetime as dt
import struct
import zlib
from dataclasses import replace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cardfmt
from cardfmt import (
    IMAGE_SIZE,
    Alarm,
    CardImage,
    CardRefused,
    CardUnreadable,
    Header,
    MeterReport,
    Reason,
    ReportStatus,
    SlotStatus,
    changed_pages,
    decode,
    derive_meter_key,
    encode,
    issue_card,
    next_purchase,
    pending_spent,
    plan_write,
    seal_report,
    sign_purchase,
)
from cardfmt.image import HEADER_SIZE, REPORT_OFFSET, REPORT_SIZE, SLOT_OFFSETS, SLOT_SIZE

SERVER_KEYS = {1: Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)}
SERVER_KEYS[2] = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
FOREIGN_KEY = Ed25519PrivateKey.from_private_bytes(bytes([99]) * 32)
PUBLIC_KEYS = {version: key.public_key() for version, key in SERVER_KEYS.items()}
MASTER_KEY = b"test master key, 32 bytes long.."
T0 = dt.datetime(2026, 12, 4, 8, 0, tzinfo=dt.UTC)


def make_header(**overrides: Any) -> Header:
    values: dict[str, Any] = {"card_no": "C1000010", "meter_no": "M1000010", "key_version": 1}
    values.update(overrides)
    return Header(**values)


def make_card(**overrides: Any) -> CardImage:
    """A freshly issued card: header and slot A, no report."""
    header = make_header(**overrides)
    return issue_card(header, issued_at=T0, signing_key=SERVER_KEYS[1], key_version=1)


def load(image: CardImage, volume: int, **overrides: Any) -> CardImage:
    values: dict[str, Any] = {
        "add_volume": volume,
        "issued_at": T0 + dt.timedelta(hours=1),
        "signing_key": SERVER_KEYS[1],
        "key_version": 1,
    }
    values.update(overrides)
    return next_purchase(image, **values)


def meter_key(meter_no: str = "M1000010") -> bytes:
    return derive_meter_key(MASTER_KEY, meter_no)


def make_report(meter_no: str = "M1000010", **overrides: Any) -> MeterReport:
    values: dict[str, Any] = {
        "meter_no": meter_no,
        "report_seq": 7,
        "count_applied": 1,
        "remaining": 1234,
        "total_used": 50_000,
        "total_purchased": 51_234,
        "valve_open": True,
        "alarms": Alarm.LOW_BATTERY,
        "reported_at": T0 + dt.timedelta(days=1),
    }
    values.update(overrides)
    return seal_report(MeterReport(**values), meter_key(meter_no))


def read(raw: bytes, **overrides: Any) -> CardImage:
    values: dict[str, Any] = {"public_keys": PUBLIC_KEYS, "meter_key": meter_key()}
    values.update(overrides)
    return decode(raw, **values)


def with_crc(block: bytes) -> bytes:
    """A block whose last 4 bytes are fixed up to the CRC of the rest."""
    return block[:-4] + zlib.crc32(block[:-4]).to_bytes(4, "big")


def patch(raw: bytes, offset: int, data: bytes) -> bytes:
    return raw[:offset] + data + raw[offset + len(data) :]


# --- layout and round trip ---------------------------------------------------------


def test_new_card_layout() -> None:
    raw = encode(make_card())
    assert len(raw) == IMAGE_SIZE == 126 * 4
    assert raw[:4] == b"RQGC"
    assert raw[4] == 1  # format version
    assert raw[10:18] == b"C1000010"
    # slot A at page 18 with generation 1, N 0, pending 0; slot B and the report empty
    assert struct.unpack(">III", raw[56:68]) == (1, 0, 0)
    assert raw[SLOT_OFFSETS[1] : SLOT_OFFSETS[1] + SLOT_SIZE] == bytes(SLOT_SIZE)
    assert raw[REPORT_OFFSET:] == bytes(IMAGE_SIZE - REPORT_OFFSET)


def test_round_trip_with_report() -> None:
    image = replace(load(make_card(), 2500), report=make_report())
    decoded = read(encode(image))
    assert decoded == replace(image, report_status=ReportStatus.VERIFIED)
    assert decoded.current.purchase_count == 1
    assert decoded.current.pending_volume == 2500
    assert decoded.slot_status == (SlotStatus.VALID, SlotStatus.VALID)
    assert decoded.report is not None and decoded.report.alarms == Alarm.LOW_BATTERY


def test_report_without_meter_key_is_unverified() -> None:
    raw = encode(replace(make_card(), report=make_report()))
    decoded = read(raw, meter_key=None)
    assert decoded.report_status is ReportStatus.UNVERIFIED
    assert decoded.report == make_report()


def test_blank_report_means_no_report() -> None:
    decoded = read(encode(make_card()))
    assert decoded.report is None
    assert decoded.report_status is ReportStatus.BLANK


def test_public_api_is_listed() -> None:
    for name in cardfmt.__all__:
        assert hasattr(cardfmt, name), name
    assert "decode" in cardfmt.__all__ and "next_purchase" in cardfmt.__all__


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("card_no", ""),
        ("card_no", "C" * 21),
        ("card_no", "卡号"),
        ("meter_no", "M\x00"),
        ("key_version", -1),
        ("replacement_count", 70000),
    ],
)
def test_header_refuses_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        make_header(**{field: value})


def test_times_must_be_aware_whole_seconds() -> None:
    purchase = make_card().current
    with pytest.raises(ValueError, match="issued_at"):
        replace(purchase, issued_at=T0.replace(tzinfo=None))
    with pytest.raises(ValueError, match="issued_at"):
        replace(purchase, issued_at=T0.replace(microsecond=5))


# --- refusals ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 4, 503, 505, 512])
def test_wrong_length_is_unreadable(length: int) -> None:
    raw = (encode(make_card()) + bytes(8))[:length]
    with pytest.raises(CardUnreadable) as raised:
        read(raw)
    assert raised.value.reason is Reason.WRONG_LENGTH


def test_blank_tag_has_wrong_magic() -> None:
    with pytest.raises(CardUnreadable) as raised:
        read(bytes(IMAGE_SIZE))
    assert raised.value.reason is Reason.BAD_MAGIC


def test_unsupported_version() -> None:
    raw = encode(make_card())
    header = with_crc(patch(raw[:HEADER_SIZE], 4, b"\x02"))
    with pytest.raises(CardUnreadable) as raised:
        read(patch(raw, 0, header))
    assert raised.value.reason is Reason.UNSUPPORTED_VERSION


def test_header_crc() -> None:
    raw = encode(make_card())
    with pytest.raises(CardUnreadable) as raised:
        read(patch(raw, 20, b"9"))
    assert raised.value.reason is Reason.HEADER_CRC


def test_both_slots_torn_is_no_state() -> None:
    raw = encode(load(make_card(), 100))
    for offset in SLOT_OFFSETS:
        raw = patch(raw, offset + 8, b"\xff")
    with pytest.raises(CardUnreadable) as raised:
        read(raw)
    assert raised.value.reason is Reason.NO_VALID_SLOT


def test_one_torn_slot_takes_the_other() -> None:
    old = load(make_card(), 100)
    new = load(old, 200)
    raw = patch(encode(new), SLOT_OFFSETS[0] + 8, b"\xff")  # slot A now holds the new state
    decoded = read(raw)
    assert decoded.slot_status == (SlotStatus.TORN, SlotStatus.VALID)
    assert decoded.current == old.current


def _reslotted(image: CardImage, index: int, key: Ed25519PrivateKey, **changes: Any) -> bytes:
    """The image's raw bytes with slot ``index`` changed and signed by ``key``."""
    slot = image.slots[index]
    assert slot is not None
    slots = list(image.slots)
    slots[index] = sign_purchase(replace(slot, **changes), key)
    return encode(replace(image, slots=(slots[0], slots[1])))


def test_forged_slot_is_refused_not_skipped() -> None:
    image = load(make_card(), 100)  # slot A: generation 1, slot B: generation 2
    # a forger raises the older slot's pending volume and signs with his own key
    raw = _reslotted(image, 0, FOREIGN_KEY, pending_volume=99_999)
    with pytest.raises(CardRefused) as raised:
        read(raw)
    assert raised.value.reason is Reason.BAD_SIGNATURE


def test_unknown_key_version_is_refused() -> None:
    image = load(make_card(), 100, signing_key=SERVER_KEYS[2], key_version=2)
    assert read(encode(image)).current.key_version == 2  # rotation: both versions known
    with pytest.raises(CardRefused) as raised:
        read(encode(image), public_keys={1: PUBLIC_KEYS[1]})
    assert raised.value.reason is Reason.UNKNOWN_KEY_VERSION


@pytest.mark.parametrize(
    "changes", [{"card_no": "C999"}, {"meter_no": "M999"}, {"replacement_count": 1}]
)
def test_slot_of_another_card_is_refused(changes: dict[str, Any]) -> None:
    # a genuinely signed block for another card, meter or replacement copied onto this card
    raw = _reslotted(make_card(), 0, SERVER_KEYS[1], **changes)
    with pytest.raises(CardRefused) as raised:
        read(raw)
    assert raised.value.reason is Reason.CARD_MISMATCH


def test_same_generation_twice_is_ambiguous() -> None:
    image = load(make_card(), 100)
    raw = _reslotted(image, 0, SERVER_KEYS[1], generation=2, pending_volume=5)
    with pytest.raises(CardUnreadable) as raised:
        read(raw)
    assert raised.value.reason is Reason.AMBIGUOUS_SLOTS


def test_report_with_wrong_mac_is_refused() -> None:
    forged = seal_report(make_report(count_applied=9), meter_key("M-other"))
    raw = encode(replace(make_card(), report=forged))
    with pytest.raises(CardRefused) as raised:
        read(raw)
    assert raised.value.reason is Reason.REPORT_MAC


def test_report_of_another_meter_is_refused() -> None:
    raw = encode(replace(make_card(), report=make_report("M2")))
    with pytest.raises(CardRefused) as raised:
        read(raw, meter_key=None)
    assert raised.value.reason is Reason.CARD_MISMATCH


def test_torn_report_reads_as_no_report() -> None:
    raw = encode(replace(make_card(), report=make_report()))
    decoded = read(patch(raw, REPORT_OFFSET + 5, b"\x77"))
    assert decoded.report is None
    assert decoded.report_status is ReportStatus.TORN


def test_errors_say_why() -> None:
    with pytest.raises(CardUnreadable, match="bad_magic: not a Ranqi card"):
        read(bytes(IMAGE_SIZE))


# --- keys ------------------------------------------------------------------------------


def test_meter_key_derivation() -> None:
    assert meter_key("M1") == derive_meter_key(MASTER_KEY, "M1")
    assert len(meter_key("M1")) == 32
    assert meter_key("M1") != meter_key("M2")
    assert derive_meter_key(b"another master key!!", "M1") != meter_key("M1")
    with pytest.raises(ValueError, match="master key"):
        derive_meter_key(b"short", "M1")


# --- purchase rules --------------------------------------------------------------------


def test_first_load_advances_from_zero() -> None:
    image = load(make_card(), 2500)
    assert (image.current.purchase_count, image.current.pending_volume) == (1, 2500)
    assert image.current.generation == 2
    assert image.current_index == 1  # slot B; slot A kept the old state
    assert image.slots[0] == make_card().current


def test_pending_accumulates_under_same_n_until_applied() -> None:
    image = load(load(make_card(), 2500), 1000)
    assert (image.current.purchase_count, image.current.pending_volume) == (1, 3500)
    assert image.current.generation == 3
    assert image.current_index == 0  # slots alternate
    assert not pending_spent(image)


def test_n_advances_only_after_meter_applied() -> None:
    image = load(make_card(), 2500)
    not_yet = replace(image, report=make_report(count_applied=0))
    applied = replace(image, report=make_report(count_applied=1))
    raw_not_yet, raw_applied = encode(not_yet), encode(applied)
    after_not_yet = load(read(raw_not_yet), 1000).current
    after_applied = load(read(raw_applied), 1000).current
    assert (after_not_yet.purchase_count, after_not_yet.pending_volume) == (1, 3500)
    assert (after_applied.purchase_count, after_applied.pending_volume) == (2, 1000)


def test_known_applied_count_advances_without_a_report() -> None:
    image = load(make_card(), 2500)
    after = load(image, 1000, known_applied_count=1).current
    assert (after.purchase_count, after.pending_volume) == (2, 1000)


def test_unverified_report_cannot_decide() -> None:
    raw = encode(replace(load(make_card(), 2500), report=make_report(count_applied=1)))
    with pytest.raises(ValueError, match="verified"):
        load(read(raw, meter_key=None), 1000)


def test_torn_report_decides_nothing() -> None:
    raw = encode(replace(load(make_card(), 2500), report=make_report(count_applied=1)))
    torn = read(patch(raw, REPORT_OFFSET, b"\x55"))
    after = load(torn, 1000).current
    assert (after.purchase_count, after.pending_volume) == (1, 3500)


@pytest.mark.parametrize("volume", [0, -5, True])
def test_add_volume_must_be_positive(volume: int) -> None:
    with pytest.raises(ValueError, match="add_volume"):
        load(make_card(), volume)


def test_replacement_card_carries_last_state() -> None:
    header = make_header(card_no="C1000010-1", replacement_count=1)
    image = issue_card(
        header,
        issued_at=T0,
        signing_key=SERVER_KEYS[1],
        key_version=1,
        purchase_count=5,
        pending_volume=700,
    )
    decoded = read(encode(image))
    assert decoded.current.replacement_count == 1
    assert (decoded.current.purchase_count, decoded.current.pending_volume) == (5, 700)
    assert decoded.header.replacement_count == 1


def test_rewriting_the_same_image_is_harmless() -> None:
    target = encode(load(make_card(), 2500))
    assert changed_pages(target, target) == []
    assert read(target) == read(bytes(target))


def test_same_inputs_same_image() -> None:
    # a retried sync recomputes the very same target (Ed25519 signatures are deterministic)
    image = load(make_card(), 2500)
    assert encode(load(image, 300)) == encode(load(image, 300))


# --- writes ------------------------------------------------------------------------------


def test_changed_pages_numbers_from_page_4() -> None:
    old = bytes(16)
    new = patch(old, 4, b"\x01")
    assert changed_pages(old, new) == [(5, b"\x01\x00\x00\x00")]
    assert changed_pages(old, new, first_page=0) == [(1, b"\x01\x00\x00\x00")]
    with pytest.raises(ValueError, match="same length"):
        changed_pages(old, old + b"x")


def _pages_of_slot(index: int) -> range:
    first = 4 + SLOT_OFFSETS[index] // 4
    return range(first, first + SLOT_SIZE // 4)


def test_typical_load_changes_few_pages() -> None:
    # the second and later loads: the slot being replaced already names this card
    old = replace(load(load(make_card(), 2500), 1000), report=make_report(count_applied=1))
    new = load(read(encode(old)), 800)
    pages = changed_pages(encode(old), encode(new))
    assert 20 <= len(pages) <= 24  # of 126 for a full rewrite
    assert all(page in _pages_of_slot(old.current_index ^ 1) for page, _ in pages)


def test_plan_write_puts_new_slot_first_and_header_last() -> None:
    old = load(make_card(), 2500)  # current: slot B
    new = replace(load(old, 100), header=replace(old.header, key_version=2))
    plan = plan_write(encode(old), encode(new))
    assert sorted(plan) == changed_pages(encode(old), encode(new))
    pages = [page for page, _ in plan]
    slot_a = [page for page in pages if page in _pages_of_slot(0)]
    assert pages[: len(slot_a)] == slot_a
    assert pages[-1] < 4 + HEADER_SIZE // 4
    assert all(page < 4 + HEADER_SIZE // 4 for page in pages[len(slot_a) :])


def test_plan_write_on_blank_tag_writes_header_last() -> None:
    plan = plan_write(bytes(IMAGE_SIZE), encode(make_card()))
    assert plan[0][0] in _pages_of_slot(0)
    assert plan[-1][0] < 4 + HEADER_SIZE // 4
    header_pages = [page for page, _ in plan if page < 4 + HEADER_SIZE // 4]
    assert [page for page, _ in plan[-len(header_pages) :]] == header_pages


def test_plan_write_refuses_to_touch_the_current_slot() -> None:
    old = load(make_card(), 2500)  # current: slot B
    rewritten = replace(old, slots=(old.slots[0], load(make_card(), 900).current))
    with pytest.raises(ValueError, match="current purchase slot"):
        plan_write(encode(old), encode(rewritten))
    # a torn current slot is not current: the next load may overwrite it
    torn = patch(encode(old), SLOT_OFFSETS[1] + 8, b"\xff")
    assert plan_write(torn, encode(load(read(torn), 10)))


def test_unused_tail_is_ignored_and_written_as_zero() -> None:
    raw = encode(make_card())
    tail_start = REPORT_OFFSET + REPORT_SIZE
    scribbled = raw[:tail_start] + b"\xaa" * (IMAGE_SIZE - tail_start)
    decoded = read(scribbled)
    assert decoded == read(raw)
    assert encode(decoded) == raw
