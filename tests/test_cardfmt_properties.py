"""Property tests of the card image: round trips, bit flips, truncation, torn writes, the rules."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cardfmt import (
    IMAGE_SIZE,
    Alarm,
    CardError,
    CardImage,
    CardRefused,
    CardUnreadable,
    Header,
    MeterReport,
    Purchase,
    Reason,
    ReportStatus,
    SlotStatus,
    TagTypeHint,
    encode,
    issue_card,
    next_purchase,
    plan_write,
    seal_report,
    sign_purchase,
)
from cardfmt.image import HEADER_SIZE, REPORT_OFFSET, REPORT_SIZE, SLOT_OFFSETS, SLOT_SIZE
from tests.test_cardfmt import FOREIGN_KEY, MASTER_KEY, SERVER_KEYS, meter_key, read

FAST = settings(max_examples=60, deadline=None)

ids = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
# hypothesis takes naive bounds and adds the zone from ``timezones``
times = st.datetimes(
    min_value=dt.datetime(2000, 1, 1),  # noqa: DTZ001
    max_value=dt.datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(dt.UTC),
).map(lambda at: at.replace(microsecond=0))
volumes = st.integers(1, 100_000)


@st.composite
def purchases(draw: st.DrawFn, header: Header, generation: int) -> Purchase:
    key_version = draw(st.sampled_from(sorted(SERVER_KEYS)))
    purchase = Purchase(
        generation=generation,
        card_no=header.card_no,
        meter_no=header.meter_no,
        purchase_count=draw(u32),
        pending_volume=draw(u32),
        issued_at=draw(times),
        key_version=key_version,
        replacement_count=header.replacement_count,
    )
    return sign_purchase(purchase, SERVER_KEYS[key_version])


@st.composite
def reports(draw: st.DrawFn, meter_no: str) -> MeterReport:
    report = MeterReport(
        meter_no=meter_no,
        report_seq=draw(u32),
        count_applied=draw(u32),
        remaining=draw(u32),
        total_used=draw(u32),
        total_purchased=draw(u32),
        valve_open=draw(st.booleans()),
        alarms=Alarm(draw(st.integers(0, 7))),
        reported_at=draw(times),
    )
    return seal_report(report, meter_key(meter_no))


@st.composite
def images(draw: st.DrawFn, both_slots: bool = False) -> CardImage:
    """A valid image: at least one slot (distinct generations), with or without a report."""
    header = Header(
        card_no=draw(ids),
        meter_no=draw(ids),
        key_version=draw(u16),
        replacement_count=draw(u16),
        tag_type=draw(st.sampled_from(TagTypeHint)),
    )
    gen_a, gen_b = draw(st.lists(st.integers(1, 0xFFFF_FFFF), min_size=2, max_size=2, unique=True))
    slot_a = draw(purchases(header, gen_a))
    slot_b = draw(purchases(header, gen_b))
    which = "both" if both_slots else draw(st.sampled_from(["both", "a", "b"]))
    slots = (slot_a if which != "b" else None, slot_b if which != "a" else None)
    report = draw(st.none() | reports(header.meter_no))
    return CardImage(header=header, slots=slots, report=report)


def read_for(image: CardImage, raw: bytes) -> CardImage:
    return read(raw, meter_key=meter_key(image.header.meter_no))


def as_read(image: CardImage) -> CardImage:
    """What a reader with the meter key returns for a freshly encoded ``image``."""
    status = ReportStatus.BLANK if image.report is None else ReportStatus.VERIFIED
    return replace(image, report_status=status)


def flip(raw: bytes, bit: int) -> bytes:
    data = bytearray(raw)
    data[bit // 8] ^= 1 << (bit % 8)
    return bytes(data)


@FAST
@given(images())
def test_round_trip(image: CardImage) -> None:
    raw = encode(image)
    assert len(raw) == IMAGE_SIZE
    decoded = read_for(image, raw)
    assert decoded == as_read(image)
    assert encode(decoded) == raw


@FAST
@given(images(), st.integers(0, HEADER_SIZE * 8 - 1))
def test_flipped_header_bit_is_an_error(image: CardImage, bit: int) -> None:
    with pytest.raises(CardUnreadable):
        read_for(image, flip(encode(image), bit))


@FAST
@given(images(both_slots=True), st.integers(0, 1), st.integers(0, SLOT_SIZE * 8 - 1))
def test_flipped_slot_bit_falls_back_to_the_other_slot(
    image: CardImage, index: int, bit: int
) -> None:
    raw = flip(encode(image), SLOT_OFFSETS[index] * 8 + bit)
    decoded = read_for(image, raw)
    other = image.slots[1 - index]
    # never a modified state: the flipped slot is torn, the card's state is the other slot's
    assert decoded.current == other
    assert decoded.slots[index] is None
    assert decoded.slot_status[index] is SlotStatus.TORN


@FAST
@given(images(), st.integers(0, 1), st.integers(0, SLOT_SIZE * 8 - 1))
def test_flipped_bit_in_lone_slot_is_an_error(image: CardImage, index: int, bit: int) -> None:
    slots = list(image.slots)
    if slots[index] is None:
        slots[index] = slots[1 - index]
    slots[1 - index] = None
    lone = replace(image, slots=(slots[0], slots[1]))
    with pytest.raises(CardUnreadable) as raised:
        read_for(lone, flip(encode(lone), SLOT_OFFSETS[index] * 8 + bit))
    assert raised.value.reason is Reason.NO_VALID_SLOT


@FAST
@given(images(), st.integers(0, REPORT_SIZE * 8 - 1))
def test_flipped_report_bit_is_detected(image: CardImage, bit: int) -> None:
    raw = flip(encode(image), REPORT_OFFSET * 8 + bit)
    decoded = read_for(image, raw)
    assert decoded.report is None
    # a flip in a blank report makes it torn, as a flip in a written one does
    assert decoded.report_status is ReportStatus.TORN
    assert decoded.slots == image.slots


@FAST
@given(images(), st.integers(0, IMAGE_SIZE - 1))
def test_truncated_image_is_refused(image: CardImage, length: int) -> None:
    with pytest.raises(CardUnreadable) as raised:
        read_for(image, encode(image)[:length])
    assert raised.value.reason is Reason.WRONG_LENGTH


@FAST
@given(images(), st.integers(0, 1))
def test_foreign_signature_is_refused(image: CardImage, index: int) -> None:
    slot = image.slots[index] or image.slots[1 - index]
    assert slot is not None
    slots = list(image.slots)
    slots[index] = sign_purchase(slot, FOREIGN_KEY)
    with pytest.raises(CardRefused) as raised:
        read_for(image, encode(replace(image, slots=(slots[0], slots[1]))))
    assert raised.value.reason is Reason.BAD_SIGNATURE


@FAST
@given(images(), reports("M-any"), st.binary(min_size=16, max_size=16))
def test_report_with_wrong_mac_is_refused(
    image: CardImage, report: MeterReport, wrong_key: bytes
) -> None:
    forged = seal_report(replace(report, meter_no=image.header.meter_no), MASTER_KEY + wrong_key)
    with pytest.raises(CardRefused) as raised:
        read_for(image, encode(replace(image, report=forged)))
    assert raised.value.reason is Reason.REPORT_MAC


@FAST
@given(
    images(),
    volumes,
    times,
    st.integers(0, 0xFFFF_FFFF),
    st.integers(0, 200),
    st.binary(min_size=4, max_size=4),
)
def test_torn_write_leaves_old_or_new_state(
    image: CardImage,
    volume: int,
    at: dt.datetime,
    applied: int,
    cut: int,
    torn_page: bytes,
) -> None:
    current = image.current
    # beyond the counters next_purchase refuses (test_pending_volume_cannot_overflow)
    assume(current.purchase_count < 0xFFFF_FFFF and current.generation < 0xFFFF_FFFF)
    assume(current.pending_volume <= 0xFFFF_FFFF - volume)
    old_raw = encode(image)
    target = next_purchase(
        read_for(image, old_raw),
        add_volume=volume,
        issued_at=at,
        signing_key=SERVER_KEYS[2],
        key_version=2,
        known_applied_count=applied,
    )
    plan = plan_write(old_raw, encode(target))
    cut = min(cut, len(plan))
    card = bytearray(old_raw)
    for page, data in plan[:cut]:
        card[(page - 4) * 4 : (page - 3) * 4] = data
    if cut < len(plan):  # the page being written when the card left holds anything
        page = plan[cut][0]
        card[(page - 4) * 4 : (page - 3) * 4] = torn_page
    decoded = read_for(image, bytes(card))
    assert decoded.current in (current, target.current)
    if cut == len(plan):
        assert decoded.current == target.current


@pytest.mark.parametrize("volume", [1, 0xFFFF_FFFF])
def test_pending_volume_cannot_overflow(volume: int) -> None:
    header = Header(card_no="C1", meter_no="M1", key_version=1)
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    image = issue_card(
        header,
        issued_at=at,
        signing_key=SERVER_KEYS[1],
        key_version=1,
        purchase_count=3,
        pending_volume=0xFFFF_FFFF - volume + 1,
    )
    with pytest.raises(ValueError, match="pending_volume"):
        next_purchase(
            image, add_volume=volume, issued_at=at, signing_key=SERVER_KEYS[1], key_version=1
        )


# --- the whole loop: kiosk loads, meter applies, no gas lost or made -----------------------


@dataclass
class FakeMeter:
    """A meter as the design describes it: applies N only when N is its own count + 1."""

    meter_no: str
    count: int = 0
    total_purchased: int = 0
    report_seq: int = 0

    def insert(self, raw: bytes, at: dt.datetime) -> bytes:
        """Apply the card's purchase if due and write the report back."""
        image = read(raw, meter_key=meter_key(self.meter_no))
        if image.current.purchase_count == self.count + 1:
            self.count += 1
            self.total_purchased += image.current.pending_volume
        self.report_seq += 1
        report = MeterReport(
            meter_no=self.meter_no,
            report_seq=self.report_seq,
            count_applied=self.count,
            remaining=0,
            total_used=0,
            total_purchased=self.total_purchased,
            valve_open=True,
            alarms=Alarm(0),
            reported_at=at,
        )
        written = encode(replace(image, report=seal_report(report, meter_key(self.meter_no))))
        return raw[:REPORT_OFFSET] + written[REPORT_OFFSET:]


events = st.lists(
    st.one_of(
        st.tuples(st.just("load"), volumes, st.integers(0, 60), st.booleans()),
        st.tuples(st.just("meter"), st.just(0), st.just(0), st.just(False)),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(events)
def test_every_loaded_volume_reaches_the_meter_once(
    steps: list[tuple[str, int, int, bool]],
) -> None:
    at = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    header = Header(card_no="C1", meter_no="M1", key_version=1)
    raw = encode(issue_card(header, issued_at=at, signing_key=SERVER_KEYS[1], key_version=1))
    meter = FakeMeter("M1")
    loaded = 0
    for kind, volume, cut, replay in steps:
        at += dt.timedelta(minutes=5)
        if kind == "meter":
            raw = meter.insert(raw, at)
            continue
        # the server: reads the card, computes the target; the kiosk writes (maybe torn)
        before = read(raw, meter_key=meter_key("M1"))
        target = next_purchase(
            before, add_volume=volume, issued_at=at, signing_key=SERVER_KEYS[1], key_version=1
        )
        plan = plan_write(raw, encode(target))
        card = bytearray(raw)
        for page, data in plan[: min(cut, len(plan))]:
            card[(page - 4) * 4 : (page - 3) * 4] = data
        if replay:  # a lost confirm: the same target written again is harmless
            for page, data in plan:
                card[(page - 4) * 4 : (page - 3) * 4] = data
        raw = bytes(card)
        if read(raw, meter_key=meter_key("M1")).current == target.current:
            loaded += volume  # read back: the credits are loaded
        else:
            assert read(raw, meter_key=meter_key("M1")).current == before.current
    raw = meter.insert(raw, at)
    assert meter.total_purchased == loaded


def test_card_error_says_reason_first() -> None:
    error = CardError(Reason.MALFORMED, "x")
    assert str(error) == "malformed: x"
    assert isinstance(error, ValueError)
