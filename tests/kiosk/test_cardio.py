"""Kiosk card I/O end to end: nfcpy's udp driver, the virtual NTAG215, cardfmt images, the meter."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import nfc.tag  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import cardfmt
from cardfmt import FIRST_PAGE, Header, ReportStatus
from kiosk.cardio import (
    AuthFailed,
    NotNtag215,
    ReadFailed,
    WriteFailed,
    authenticate,
    connect_tag,
    open_reader,
    protected_from,
    provision_card,
    read_image,
    write_image,
    write_pages,
)
from kiosk.meter_sim import MeterSimulator, Outcome
from kiosk.reader import ReaderLoop, TapStatus, WriteOrder
from kiosk.virtual_card import (
    PullMode,
    VirtualField,
    VirtualNtag215,
    factory_memory,
    pull_on_write,
    uid_for,
)

SERVER_KEY = Ed25519PrivateKey.from_private_bytes(bytes([7]) * 32)
PUBLIC_KEYS = {1: SERVER_KEY.public_key()}
MASTER_KEY = b"meter master key for the tests.."
PASSWORD = bytes.fromhex("a1b2c3d4e5f6")
T0 = dt.datetime(2026, 12, 4, 9, 0, tzinfo=dt.UTC)
HEADER = Header(card_no="C2026000042", meter_no="M2026000042", key_version=1)

ISSUED = cardfmt.encode(
    cardfmt.issue_card(HEADER, issued_at=T0, signing_key=SERVER_KEY, key_version=1)
)


def load(card: bytes, volume: int, *, meter_key: bytes | None = None) -> bytes:
    """The server's target image for a paid load on ``card``."""
    image = cardfmt.decode(card, public_keys=PUBLIC_KEYS, meter_key=meter_key)
    after = cardfmt.next_purchase(
        image, add_volume=volume, issued_at=T0, signing_key=SERVER_KEY, key_version=1
    )
    return cardfmt.encode(after)


FIRST_LOAD = load(ISSUED, 2_500)
FIRST_LOAD_PLAN = cardfmt.plan_write(ISSUED, FIRST_LOAD)


@pytest.fixture
def card() -> VirtualNtag215:
    return VirtualNtag215(uid_for(42))


@pytest.fixture
def field(card: VirtualNtag215) -> Iterator[VirtualField]:
    with VirtualField(card) as running:
        yield running


@pytest.fixture
def clf(field: VirtualField) -> Iterator[Any]:
    reader = open_reader(field.port)
    try:
        yield reader
    finally:
        reader.close()


@pytest.fixture
def issued(card: VirtualNtag215, clf: Any) -> VirtualNtag215:
    """The card after the utility issued it: Ranqi image, password set."""
    provision_card(connect_tag(clf), ISSUED, PASSWORD)
    return card


def test_provision_writes_the_issue_image_and_sets_the_password(
    card: VirtualNtag215, clf: Any, field: VirtualField
) -> None:
    tag = connect_tag(clf)
    blank = factory_memory(uid_for(42))[16:520]
    assert read_image(tag) == blank
    result = provision_card(tag, ISSUED, PASSWORD)
    assert result.image == ISSUED
    assert result.pages_written == len(cardfmt.plan_write(blank, ISSUED))
    assert card.user_memory == ISSUED
    assert card.page(133) == PASSWORD[0:4] and card.page(134)[0:2] == PASSWORD[4:6]

    tag = connect_tag(clf)  # next tap: anyone reads, only the password writes
    assert protected_from(tag) == FIRST_PAGE
    assert cardfmt.decode(read_image(tag), public_keys=PUBLIC_KEYS).header == HEADER
    with pytest.raises(WriteFailed) as refused:
        write_image(tag, ISSUED, FIRST_LOAD)
    assert refused.value.written == 0 and not refused.value.gone
    assert card.user_memory == ISSUED


def test_provision_again_with_the_same_password_is_a_no_op(
    issued: VirtualNtag215, clf: Any
) -> None:
    result = provision_card(connect_tag(clf), ISSUED, PASSWORD)
    assert result.pages_written == 0 and issued.user_memory == ISSUED
    with pytest.raises(AuthFailed):
        provision_card(connect_tag(clf), ISSUED, b"other!")


ISSUE_PLAN = cardfmt.plan_write(factory_memory(uid_for(42))[16:520], ISSUED)


@pytest.mark.parametrize(
    "k", [1, 20, len(ISSUE_PLAN), *range(len(ISSUE_PLAN) + 1, len(ISSUE_PLAN) + 5)]
)
def test_a_torn_provisioning_can_be_retried_with_the_same_password(
    card: VirtualNtag215, clf: Any, field: VirtualField, k: int
) -> None:
    field.pull_when(pull_on_write(k))  # the image pages first, then PACK, PWD, CFG1, CFG0
    with pytest.raises(WriteFailed):
        provision_card(connect_tag(clf), ISSUED, PASSWORD)
    field.put(card)
    assert provision_card(connect_tag(clf), ISSUED, PASSWORD).image == ISSUED
    tag = connect_tag(clf)
    assert protected_from(tag) == FIRST_PAGE
    assert write_image(tag, ISSUED, FIRST_LOAD, password=PASSWORD).image == FIRST_LOAD


def test_nfcpy_protect_torn_after_auth0_locks_under_the_factory_password(
    card: VirtualNtag215, clf: Any, field: VirtualField
) -> None:
    """Why provision_card does not call tag.protect(): its first write is AUTH0."""
    field.pull_when(pull_on_write(2))  # CFG0 (AUTH0 = 4) landed, the password did not
    with pytest.raises(nfc.tag.TagCommandError):
        connect_tag(clf).protect(password=PASSWORD, protect_from=FIRST_PAGE)
    field.put(card)
    with pytest.raises(AuthFailed):
        provision_card(connect_tag(clf), ISSUED, PASSWORD)
    assert connect_tag(clf).authenticate(b"") is True  # nfcpy's factory default password


def test_load_writes_changed_pages_only_and_reads_back(
    issued: VirtualNtag215, clf: Any, field: VirtualField
) -> None:
    tag = connect_tag(clf)
    old = read_image(tag)
    field.stats.reset()
    result = write_image(tag, old, FIRST_LOAD, password=PASSWORD)
    assert result.pages_written == len(FIRST_LOAD_PLAN) < 33
    assert field.stats.by_command["WRITE"] == len(FIRST_LOAD_PLAN)
    assert field.stats.by_command["PWD_AUTH"] == 1
    assert field.stats.by_command["FAST_READ"] == 1 + 2  # AUTH0, then 2 x 63 pages read back
    assert issued.user_memory == FIRST_LOAD
    image = cardfmt.decode(read_image(connect_tag(clf)), public_keys=PUBLIC_KEYS)
    assert (image.current.purchase_count, image.current.pending_volume) == (1, 2_500)


def test_full_rewrite_of_every_page_reads_back_equal(issued: VirtualNtag215, clf: Any) -> None:
    tag = connect_tag(clf)
    tag.authenticate(PASSWORD)
    full = [(FIRST_PAGE + i, FIRST_LOAD[4 * i : 4 * i + 4]) for i in range(126)]
    write_pages(tag, full)
    assert read_image(tag) == FIRST_LOAD == read_image(tag, fast=False)


def test_a_card_never_protected_gets_the_password_with_its_first_load(
    card: VirtualNtag215, clf: Any, field: VirtualField
) -> None:
    tag = connect_tag(clf)
    write_image(tag, read_image(tag), ISSUED)  # issued by a utility that set no password
    assert protected_from(tag) > 129
    field.stats.reset()
    assert write_image(tag, ISSUED, FIRST_LOAD, password=PASSWORD).image == FIRST_LOAD
    assert field.stats.by_command["PWD_AUTH"] == 0
    tag = connect_tag(clf)
    assert protected_from(tag) == FIRST_PAGE
    with pytest.raises(AuthFailed):
        authenticate(tag, b"guess!")
    tag = connect_tag(clf)
    authenticate(tag, PASSWORD)


def test_wrong_password_is_refused_and_nothing_written(issued: VirtualNtag215, clf: Any) -> None:
    tag = connect_tag(clf)
    with pytest.raises(AuthFailed):
        write_image(tag, ISSUED, FIRST_LOAD, password=b"guess!")
    assert issued.user_memory == ISSUED


def test_a_tag_that_is_not_an_ntag215_is_refused(field: VirtualField, clf: Any) -> None:
    field.put(VirtualNtag215(uid_for(3), version=bytes.fromhex("0004040201001303")))  # NTAG216
    tag = connect_tag(clf)
    with pytest.raises(NotNtag215):
        read_image(tag)
    with pytest.raises(NotNtag215):
        write_image(tag, ISSUED, FIRST_LOAD)


def test_a_card_pulled_while_reading_raises(
    issued: VirtualNtag215, clf: Any, field: VirtualField
) -> None:
    tag = connect_tag(clf)
    field.pull_when(lambda frame: frame[0] == 0x3A)
    with pytest.raises(ReadFailed, match="left the field"):
        read_image(tag)


# AFTER at k leaves the card as BEFORE at k + 1 does; only its last write is new ground
TEARS = [(k, mode) for k in range(1, len(FIRST_LOAD_PLAN) + 1) for mode in PullMode]
TEARS = [
    (k, mode) for k, mode in TEARS if mode is not PullMode.AFTER or k in (1, len(FIRST_LOAD_PLAN))
]


@pytest.mark.parametrize(("k", "mode"), TEARS)
def test_a_load_torn_at_any_write_leaves_old_or_new_and_a_retry_completes(
    issued: VirtualNtag215, clf: Any, field: VirtualField, k: int, mode: PullMode
) -> None:
    tag = connect_tag(clf)
    old = read_image(tag)
    field.pull_when(pull_on_write(k), mode)
    with pytest.raises(WriteFailed) as torn:
        write_image(tag, old, FIRST_LOAD, password=PASSWORD)
    assert (torn.value.written, torn.value.gone) == (k - 1, True)

    field.put(issued)  # the resident taps again
    tag = connect_tag(clf)
    seen = read_image(tag)
    state = cardfmt.decode(seen, public_keys=PUBLIC_KEYS).current
    before = cardfmt.decode(old, public_keys=PUBLIC_KEYS).current
    after = cardfmt.decode(FIRST_LOAD, public_keys=PUBLIC_KEYS).current
    assert state in (before, after)
    if k < len(FIRST_LOAD_PLAN) or mode is not PullMode.AFTER:
        assert state == before  # the new slot is only whole once its last page lands
    # the server issues the same target again; the retry finishes the job
    assert write_image(tag, seen, FIRST_LOAD, password=PASSWORD).image == FIRST_LOAD


def test_card_to_meter_and_back_carries_a_verified_report(
    issued: VirtualNtag215, clf: Any, field: VirtualField
) -> None:
    meter = MeterSimulator.new(
        HEADER.meter_no, master_key=MASTER_KEY, public_keys=PUBLIC_KEYS, capacity=10_000
    )
    meter_key = cardfmt.derive_meter_key(MASTER_KEY, HEADER.meter_no)
    tag = connect_tag(clf)
    write_image(tag, read_image(tag), FIRST_LOAD, password=PASSWORD)

    # the meter reads the card over its own NFC front end and writes its report back
    tag = connect_tag(clf)
    on_card = read_image(tag)
    with_report, result = meter.insert(on_card)
    assert (result.outcome, result.applied_volume) == (Outcome.APPLIED, 2_500)
    write_image(tag, on_card, with_report, password=PASSWORD)

    # the next kiosk tap carries the report to the server, which can load again
    tag = connect_tag(clf)
    seen = cardfmt.decode(read_image(tag), public_keys=PUBLIC_KEYS, meter_key=meter_key)
    assert seen.report_status is ReportStatus.VERIFIED and seen.report is not None
    assert (seen.report.count_applied, seen.report.remaining) == (1, 2_500)
    second = load(read_image(tag), 1_000, meter_key=meter_key)
    write_image(tag, read_image(tag), second, password=PASSWORD)
    _, result = meter.insert(issued.user_memory)
    assert (result.outcome, result.applied_volume) == (Outcome.APPLIED, 1_000)
    _, result = meter.insert(second)  # the same image again: nothing more
    assert result.applied_volume == 0 and meter.remaining == 3_500


class FakeHost:
    """A server in miniature: credits waiting per card, a write id per order, confirms kept."""

    def __init__(self, credits: int = 0) -> None:
        self.credits = credits
        self.synced: list[bytes] = []
        self.confirmed: list[tuple[str, bytes]] = []

    def sync(self, uid: bytes, image: bytes) -> WriteOrder | None:
        self.synced.append(image)
        if not self.credits:
            return None
        target = load(image, self.credits)
        return WriteOrder(f"w{len(self.synced)}", target, PASSWORD)

    def confirm(self, write_id: str, image: bytes) -> None:
        self.confirmed.append((write_id, image))
        self.credits = 0


def test_reader_loop_loads_credits_and_confirms_after_read_back(
    issued: VirtualNtag215, field: VirtualField
) -> None:
    host = FakeHost(credits=1_200)
    loop = ReaderLoop(lambda: open_reader(field.port), host)
    tapped = loop.run_once()
    assert (tapped.status, tapped.uid) == (TapStatus.LOADED, issued.uid)
    assert host.confirmed == [("w1", issued.user_memory)]
    assert (
        cardfmt.decode(issued.user_memory, public_keys=PUBLIC_KEYS).current.pending_volume == 1_200
    )
    assert loop.run_once().status is TapStatus.SYNCED  # nothing left to load
    assert host.synced[-1] == issued.user_memory


def test_reader_loop_never_confirms_a_torn_write(
    issued: VirtualNtag215, field: VirtualField
) -> None:
    host = FakeHost(credits=800)
    loop = ReaderLoop(lambda: open_reader(field.port), host)
    field.pull_when(pull_on_write(5))
    tapped = loop.run_once()
    assert tapped.status is TapStatus.FAILED and "left the field" in tapped.error
    assert host.confirmed == []
    field.put(issued)
    assert loop.run_once().status is TapStatus.LOADED and len(host.confirmed) == 1


def test_reader_loop_without_a_card(field: VirtualField) -> None:
    field.take()
    loop = ReaderLoop(lambda: open_reader(field.port), FakeHost(), wait=0.1)
    assert loop.run_once().status is TapStatus.NO_CARD
