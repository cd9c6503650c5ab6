"""The virtual NTAG215 against nfcpy's real udp driver and Type 2 / NTAG21x tag code."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nfc  # type: ignore[import-untyped]
import nfc.tag  # type: ignore[import-untyped]
import nfc.tag.tt2  # type: ignore[import-untyped]
import nfc.tag.tt2_nxp  # type: ignore[import-untyped]
import pytest

from kiosk.cardio import NoCard, connect_tag, open_reader
from kiosk.virtual_card import (
    MEMORY_SIZE,
    PullMode,
    VirtualField,
    VirtualNtag215,
    console_command,
    demo_cards,
    factory_memory,
    pull_after,
    pull_on_write,
    uid_for,
)

PASSWORD = b"\x12\x34\x56\x78\xab\xcd"


@pytest.fixture
def card() -> VirtualNtag215:
    return VirtualNtag215(uid_for(1))


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


def test_field_and_reader_use_loopback_only(field: VirtualField, clf: Any) -> None:
    assert field._socket.getsockname()[0] == "127.0.0.1"
    connect_tag(clf)
    assert clf.device.socket.getsockname()[0] == "127.0.0.1"
    with pytest.raises(ValueError, match="loopback"):
        open_reader(field.port, host="192.0.2.1")


def test_plain_udp_path_identifies_ntag215(field: VirtualField, card: VirtualNtag215) -> None:
    reader = nfc.ContactlessFrontend(f"udp:127.0.0.1:{field.port}")
    try:
        tag = reader.connect(rdwr={"targets": ["106A"], "on-connect": lambda tag: False})
        assert isinstance(tag, nfc.tag.tt2_nxp.NTAG215)
        assert bytes(tag.identifier) == card.uid
        assert tag.product == "NXP NTAG215"
        # why kiosk.cardio.open_reader exists: upstream's reader socket listens on all interfaces
        assert reader.device.socket.getsockname()[0] == "0.0.0.0"  # noqa: S104
    finally:
        reader.close()
    # both cascade levels of a 7-byte UID: anticollision once, then select by UID
    assert field.stats.by_command["ANTICOLLISION_CL2"] == 1
    assert field.stats.by_command["SELECT_CL2"] >= 2


def test_factory_memory_reads_as_shipped(clf: Any, card: VirtualNtag215) -> None:
    tag = connect_tag(clf)
    head = bytes(tag.read(0))
    assert head[0:3] == card.uid[0:3] and head[4:8] == card.uid[3:7]
    assert head[3] == 0x88 ^ head[0] ^ head[1] ^ head[2]  # BCC0
    assert head[12:16] == bytes.fromhex("e1103e00")  # NTAG215 capability container
    # READ rolls over after the last page; PWD and PACK read as zero
    tail = bytes(tag.read(132))
    assert tail == bytes.fromhex("00050000") + bytes(8) + head[0:4]


def test_read_past_the_end_is_a_nak(clf: Any) -> None:
    tag = connect_tag(clf)
    with pytest.raises(nfc.tag.tt2.Type2TagCommandError):
        tag.read(135)
    # nfcpy re-selects the card after a NAK and carries on
    assert len(tag.read(4)) == 16


def test_write_then_read_back_and_uid_pages_are_read_only(clf: Any, card: VirtualNtag215) -> None:
    tag = connect_tag(clf)
    tag.write(4, b"RQGC")
    tag.write(129, b"\x01\x02\x03\x04")
    assert bytes(tag.read(4))[0:4] == b"RQGC"
    assert bytes(tag.read(128))[4:8] == b"\x01\x02\x03\x04"
    with pytest.raises(nfc.tag.tt2.Type2TagCommandError):
        tag.write(0, b"\x00\x00\x00\x00")
    assert card.page(0) == factory_memory(uid_for(1))[0:4]


def test_fast_read_matches_read(clf: Any, card: VirtualNtag215) -> None:
    card.memory[16:532] = bytes(range(256)) * 2 + bytes(4)
    tag = connect_tag(clf)
    fast = bytes(tag.transceive(bytes([0x3A, 4, 129])))
    slow = b"".join(bytes(tag.read(page)) for page in range(4, 130, 4))[:504]
    assert fast == slow == card.user_memory


def test_password_protection_with_nfcpy_protect_and_authenticate(
    clf: Any, card: VirtualNtag215
) -> None:
    tag = connect_tag(clf)
    assert tag.protect(password=PASSWORD, protect_from=4) is True
    assert card.page(133) == PASSWORD[0:4] and card.page(134)[0:2] == PASSWORD[4:6]

    tag = connect_tag(clf)  # a new tap: authentication is gone
    assert bytes(tag.read(4))[0:4] == b"\x03\x00\xfe\x00"  # reading stays open
    assert bytes(tag.read(132))[4:12] == bytes(8)  # PWD and PACK never read back
    with pytest.raises(nfc.tag.tt2.Type2TagCommandError):
        tag.write(4, b"EVIL")

    tag = connect_tag(clf)
    assert tag.authenticate(b"wrong!") is False
    tag = connect_tag(clf)
    assert tag.authenticate(PASSWORD) is True
    tag.write(4, b"GOOD")
    assert card.page(4) == b"GOOD"


def test_read_protection(clf: Any, card: VirtualNtag215) -> None:
    tag = connect_tag(clf)
    assert tag.protect(password=PASSWORD, read_protect=True, protect_from=16) is True
    tag = connect_tag(clf)
    assert len(tag.read(4)) == 16  # below AUTH0
    with pytest.raises(nfc.tag.tt2.Type2TagCommandError):
        tag.read(16)
    tag = connect_tag(clf)
    assert tag.authenticate(PASSWORD)
    assert len(tag.read(16)) == 16


def test_authentication_limit(clf: Any, card: VirtualNtag215) -> None:
    tag = connect_tag(clf)
    assert tag.protect(password=PASSWORD, protect_from=4)
    card.memory[132 * 4] |= 0x01  # AUTHLIM 1: two wrong passwords and the door shuts
    for _ in range(2):
        tag = connect_tag(clf)
        assert tag.authenticate(b"guess!") is False
    tag = connect_tag(clf)
    assert tag.authenticate(PASSWORD) is False
    assert card.failed_auths == 2


def test_permanent_lock_with_nfcpy_lock_bits(clf: Any, card: VirtualNtag215) -> None:
    tag = connect_tag(clf)
    assert tag.protect() is True  # no password: nfcpy sets every lock bit
    tag = connect_tag(clf)
    for page in (4, 20, 129, 131):
        with pytest.raises(nfc.tag.tt2.Type2TagCommandError):
            tag.write(page, b"\x00\x00\x00\x01")
        tag = connect_tag(clf)  # a NAK drops the card to IDLE
    assert card.page(129) == bytes(4)


def test_card_posing_as_ntag213_is_identified_as_such(field: VirtualField, clf: Any) -> None:
    field.put(VirtualNtag215(uid_for(2), version=bytes.fromhex("0004040201000f03")))
    assert isinstance(connect_tag(clf), nfc.tag.tt2_nxp.NTAG213)


def test_pulled_card_stops_answering(field: VirtualField, clf: Any, card: VirtualNtag215) -> None:
    tag = connect_tag(clf)
    field.pull_when(pull_after(1))
    assert len(tag.read(4)) == 16
    with pytest.raises(nfc.tag.tt2.Type2TagCommandError) as raised:
        tag.read(8)
    assert raised.value.errno == nfc.tag.TIMEOUT_ERROR
    assert field.card is None and field.pulled is card


@pytest.mark.parametrize(
    ("mode", "expected"),
    [(PullMode.BEFORE, b"old!"), (PullMode.AFTER, b"new!"), (PullMode.GARBLED, b"ne-{")],
)
def test_pull_modes_decide_what_the_torn_write_leaves(
    field: VirtualField, clf: Any, card: VirtualNtag215, mode: PullMode, expected: bytes
) -> None:
    tag = connect_tag(clf)
    tag.write(10, b"old!")
    field.pull_when(pull_on_write(1), mode)
    with pytest.raises(nfc.tag.tt2.Type2TagCommandError):
        tag.write(10, b"new!")
    assert card.page(10) == expected


def test_one_field_many_cards(field: VirtualField, clf: Any) -> None:
    cards = [VirtualNtag215(uid_for(serial)) for serial in range(10)]
    for chosen in (3, 7, 0):
        field.put(cards[chosen])
        assert bytes(connect_tag(clf).identifier) == cards[chosen].uid
    field.take()
    with pytest.raises(NoCard):
        connect_tag(clf, timeout=0.2)


def test_card_memory_persists_between_runs(tmp_path: Path) -> None:
    path = tmp_path / "card-1.ntag215"
    card = VirtualNtag215.load(path, uid=uid_for(1))
    with VirtualField(card) as field:
        reader = open_reader(field.port)
        try:
            connect_tag(reader).write(50, b"kept")
        finally:
            reader.close()
    assert path.stat().st_size == MEMORY_SIZE
    again = VirtualNtag215.load(path)
    assert again.uid == uid_for(1) and again.page(50) == b"kept"


def test_field_ignores_type_b_and_f_polls(field: VirtualField) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        probe.settimeout(0.2)
        probe.sendto(b"106B 050010", ("127.0.0.1", field.port))
        with pytest.raises(TimeoutError):
            probe.recvfrom(64)
        probe.sendto(b"106A 26", ("127.0.0.1", field.port))
        assert probe.recvfrom(64)[0] == b"106A 4400"


def test_demo_console_taps_one_of_ten_kept_cards(tmp_path: Path) -> None:
    cards = demo_cards(tmp_path / "cards")
    assert len(cards) == 10 and len({card.uid for card in cards}) == 10
    with VirtualField() as field:
        assert "card 4" in console_command(field, cards, "tap 4")
        reader = open_reader(field.port)
        try:
            connect_tag(reader).write(60, b"demo")
            assert console_command(field, cards, "pull 1").startswith("the card leaves")
            tag = connect_tag(reader)
            with pytest.raises(nfc.tag.tt2.Type2TagCommandError):
                tag.write(61, b"torn")
        finally:
            reader.close()
        assert field.card is None and "no card 10" in console_command(field, cards, "tap 10")
    assert demo_cards(tmp_path / "cards")[4].page(60) == b"demo"  # kept on disk
    assert demo_cards(tmp_path / "cards")[4].page(61) == bytes(4)
