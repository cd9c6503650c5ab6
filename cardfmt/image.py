"""The Ranqi card image: layout, codec, signing and verification.

The image is the user memory of an NTAG215 (Type 2 tag): 504 bytes, pages 4..129
of 4 bytes each. Pages 0..3 (UID, lock, capability container) and 130+ (config,
password) are the tag's own and never part of the image. On a larger tag
(NTAG216) the image is the first 504 bytes of user memory. All integers are
big-endian and unsigned; text fields are ASCII, NUL-padded; times are Unix
seconds, UTC. Gas volume is integer 0.01 m³.

Offsets below are from the start of the image (byte 0 = page 4, byte 4k = page 4+k).

Header, bytes 0..55 (pages 4..17), written once when the card is issued::

    0   4  magic b"RQGC"
    4   1  format version (1)
    5   1  tag type hint: 1 NTAG215, 2 NTAG216, 3 FeliCa
    6   2  key version the card was personalised under (its NTAG password is
           derived with it); the purchase slots carry their own signing key version
    8   2  replacement count 补卡次数
    10 20  card number
    30 20  meter number
    50  2  reserved, zero
    52  4  CRC-32 of bytes 0..51

Purchase slot A, bytes 56..187 (pages 18..50); slot B, bytes 188..319
(pages 51..83); each 132 bytes, written by the server through a kiosk::

    0   4  generation (the reader takes the valid slot with the highest one)
    4   4  purchase count N 购气次数
    8   4  pending volume, 0.01 m³, absolute: all gas loaded under N
    12  8  issue time
    20  2  signing key version
    22  2  replacement count
    24 20  card number
    44 20  meter number
    64 64  Ed25519 signature over PURCHASE_CONTEXT + bytes 0..63
    128 4  CRC-32 of bytes 0..127

Meter report, bytes 320..391 (pages 84..101), 72 bytes, written by the meter;
all zero on a card that has not been in its meter yet::

    0   4  report sequence number (the meter's own)
    4   4  count applied: the meter's own purchase count N
    8   4  remaining volume
    12  4  total used
    16  4  total purchased
    20  8  report time
    28  1  valve: 0 closed, 1 open
    29  1  alarms: bit 0 leak, bit 1 low battery, bit 2 tamper
    30  2  reserved, zero
    32 20  meter number
    52 16  HMAC-SHA256(meter key, REPORT_CONTEXT + bytes 0..51), first 16 bytes
    68  4  CRC-32 of bytes 0..67

Bytes 392..503 (pages 102..129) are zero.

How a reader judges the blocks:

* The CRC tells a torn write from a forgery. A slot that is all zero is empty; a
  slot whose CRC fails is torn and ignored. A slot whose CRC holds must carry a
  known key version and a good signature and name the header's card, meter and
  replacement count, or the card is refused (:class:`CardRefused`): a reader
  never falls back silently past a forged or foreign block.
* One torn or empty slot and one valid: the valid one is the state. Both valid:
  the higher generation. Neither valid: the card is unreadable
  (:class:`CardUnreadable`, no purchase state).
* A report whose CRC fails is torn: it reads as "no report" with
  :attr:`ReportStatus.TORN`. A report whose MAC is wrong under the given meter
  key is refused. Without a meter key (a kiosk) the report is returned
  unverified.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PAGE_SIZE = 4
FIRST_PAGE = 4
IMAGE_SIZE = 504
MAGIC = b"RQGC"
FORMAT_VERSION = 1
ID_SIZE = 20

HEADER_OFFSET, HEADER_SIZE = 0, 56
SLOT_OFFSETS = (56, 188)
SLOT_SIZE = 132
REPORT_OFFSET, REPORT_SIZE = 320, 72

#: prefixes of the signed and MACed bytes, so a signature over one kind of block
#: can never pass for another
PURCHASE_CONTEXT = b"ranqi card purchase v1\x00"
REPORT_CONTEXT = b"ranqi meter report v1\x00"
METER_KEY_SALT = b"ranqi meter key v1"

SIGNATURE_SIZE = 64
MAC_SIZE = 16
METER_KEY_SIZE = 32

_HEADER = struct.Struct(">4sBBHH20s20s2s")
_SLOT_BODY = struct.Struct(">IIIQHH20s20s")
_REPORT_BODY = struct.Struct(">IIIIIQBB2s20s")
_U16, _U32, _U64 = 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF_FFFF_FFFF

assert _HEADER.size + 4 == HEADER_SIZE
assert _SLOT_BODY.size + SIGNATURE_SIZE + 4 == SLOT_SIZE
assert _REPORT_BODY.size + MAC_SIZE + 4 == REPORT_SIZE
assert REPORT_OFFSET + REPORT_SIZE <= IMAGE_SIZE


class Reason(enum.StrEnum):
    """Why a card image was not accepted."""

    WRONG_LENGTH = "wrong_length"
    BAD_MAGIC = "bad_magic"
    UNSUPPORTED_VERSION = "unsupported_version"
    HEADER_CRC = "header_crc"
    MALFORMED = "malformed"
    NO_VALID_SLOT = "no_valid_slot"
    AMBIGUOUS_SLOTS = "ambiguous_slots"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY_VERSION = "unknown_key_version"
    CARD_MISMATCH = "card_mismatch"
    REPORT_MAC = "report_mac"


class CardError(ValueError):
    """A card image that cannot be used; ``reason`` says why in one word."""

    def __init__(self, reason: Reason, message: str) -> None:
        super().__init__(f"{reason.value}: {message}")
        self.reason = reason


class CardUnreadable(CardError):
    """Not a readable Ranqi image (blank, foreign, torn or truncated): rewrite or retry."""


class CardRefused(CardError):
    """A well-formed image that fails verification (forged, foreign key, copied): refuse."""


class TagTypeHint(enum.IntEnum):
    """The tag the image was written for; names match ``models.states.TagType`` values."""

    NTAG215 = 1
    NTAG216 = 2
    FELICA = 3


class Alarm(enum.IntFlag):
    """Alarms a meter reports."""

    LEAK = 1
    LOW_BATTERY = 2
    TAMPER = 4


ALL_ALARMS = Alarm.LEAK | Alarm.LOW_BATTERY | Alarm.TAMPER


class SlotStatus(enum.StrEnum):
    """What a reader found in a purchase slot."""

    VALID = "valid"
    EMPTY = "empty"
    TORN = "torn"


class ReportStatus(enum.StrEnum):
    """What a reader found in the report block."""

    BLANK = "blank"
    TORN = "torn"
    VERIFIED = "verified"
    UNVERIFIED = "unverified"


def _check_int(name: str, value: int, limit: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise ValueError(f"{name} must be an integer in 0..{limit}, got {value!r}")


def _check_id(name: str, value: str) -> None:
    if not 1 <= len(value) <= ID_SIZE or not value.isascii() or not value.isprintable():
        raise ValueError(f"{name} must be 1..{ID_SIZE} printable ASCII characters, got {value!r}")


def _check_time(name: str, value: dt.datetime) -> None:
    # the card holds whole seconds; refusing finer times keeps decode(encode(x)) == x
    if value.tzinfo is None or value.microsecond or value.timestamp() < 0:
        raise ValueError(f"{name} must be an aware time after 1970 in whole seconds")


def _seconds(value: dt.datetime) -> int:
    return int(value.timestamp())


def _from_seconds(value: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(value, dt.UTC)


def _pack_id(value: str) -> bytes:
    return value.encode("ascii").ljust(ID_SIZE, b"\x00")


def _unpack_id(raw: bytes, what: str) -> str:
    text = raw.rstrip(b"\x00")
    if not text or b"\x00" in text or not all(0x20 <= b < 0x7F for b in text):
        raise CardUnreadable(Reason.MALFORMED, f"{what} is not printable ASCII")
    return text.decode("ascii")


def _crc(data: bytes) -> bytes:
    return zlib.crc32(data).to_bytes(4, "big")


@dataclass(frozen=True)
class Header:
    """Who the card is: written once when the card is issued."""

    card_no: str
    meter_no: str
    #: version of the keys the card was personalised under (its NTAG password)
    key_version: int
    #: 补卡次数: 0 for the first card of a meter, +1 for each replacement
    replacement_count: int = 0
    tag_type: TagTypeHint = TagTypeHint.NTAG215

    def __post_init__(self) -> None:
        _check_id("card_no", self.card_no)
        _check_id("meter_no", self.meter_no)
        _check_int("key_version", self.key_version, _U16)
        _check_int("replacement_count", self.replacement_count, _U16)
        TagTypeHint(self.tag_type)


@dataclass(frozen=True)
class Purchase:
    """A purchase slot: the absolute gas state the server signs for a card and meter."""

    generation: int
    card_no: str
    meter_no: str
    #: 购气次数 N: the meter applies it when N is its own count + 1
    purchase_count: int
    #: all gas loaded under N that the meter has not taken, 0.01 m³
    pending_volume: int
    issued_at: dt.datetime
    #: version of the server key that signed this slot
    key_version: int
    replacement_count: int
    signature: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        _check_int("generation", self.generation, _U32)
        _check_id("card_no", self.card_no)
        _check_id("meter_no", self.meter_no)
        _check_int("purchase_count", self.purchase_count, _U32)
        _check_int("pending_volume", self.pending_volume, _U32)
        _check_time("issued_at", self.issued_at)
        _check_int("key_version", self.key_version, _U16)
        _check_int("replacement_count", self.replacement_count, _U16)
        if self.signature and len(self.signature) != SIGNATURE_SIZE:
            raise ValueError("signature must be 64 bytes")

    def body(self) -> bytes:
        """The 64 signed bytes of the slot."""
        return _SLOT_BODY.pack(
            self.generation,
            self.purchase_count,
            self.pending_volume,
            _seconds(self.issued_at),
            self.key_version,
            self.replacement_count,
            _pack_id(self.card_no),
            _pack_id(self.meter_no),
        )


@dataclass(frozen=True)
class MeterReport:
    """The meter's report carried back on the card: readings and alarms."""

    meter_no: str
    report_seq: int
    #: the meter's own purchase count: every purchase up to it is spent
    count_applied: int
    remaining: int
    total_used: int
    total_purchased: int
    valve_open: bool
    alarms: Alarm
    reported_at: dt.datetime
    mac: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        _check_id("meter_no", self.meter_no)
        for name in ("report_seq", "count_applied", "remaining", "total_used", "total_purchased"):
            _check_int(name, getattr(self, name), _U32)
        _check_int("alarms", int(self.alarms), int(ALL_ALARMS))
        _check_time("reported_at", self.reported_at)
        if self.mac and len(self.mac) != MAC_SIZE:
            raise ValueError("mac must be 16 bytes")

    def body(self) -> bytes:
        """The 52 authenticated bytes of the report."""
        return _REPORT_BODY.pack(
            self.report_seq,
            self.count_applied,
            self.remaining,
            self.total_used,
            self.total_purchased,
            _seconds(self.reported_at),
            int(self.valve_open),
            int(self.alarms),
            b"\x00\x00",
            _pack_id(self.meter_no),
        )


@dataclass(frozen=True)
class CardImage:
    """A decoded card: header, both purchase slots, and the meter's report."""

    header: Header
    #: slot A and slot B; None where the slot is empty or torn
    slots: tuple[Purchase | None, Purchase | None]
    report: MeterReport | None = None
    report_status: ReportStatus = ReportStatus.BLANK
    #: which slots the reader found torn (their entry in ``slots`` is None)
    torn_slots: tuple[bool, bool] = (False, False)

    @property
    def slot_status(self) -> tuple[SlotStatus, SlotStatus]:
        """What the reader found in slots A and B."""
        a, b = (
            SlotStatus.TORN if torn else SlotStatus.EMPTY if slot is None else SlotStatus.VALID
            for slot, torn in zip(self.slots, self.torn_slots, strict=True)
        )
        return a, b

    @property
    def current_index(self) -> int:
        """Index (0 = A, 1 = B) of the slot holding the card's state."""
        a, b = self.slots
        if a is None and b is None:
            raise CardUnreadable(Reason.NO_VALID_SLOT, "no valid purchase slot")
        if b is None:
            return 0
        if a is None:
            return 1
        return 0 if a.generation >= b.generation else 1

    @property
    def current(self) -> Purchase:
        """The purchase state the card carries: the valid slot with the highest generation."""
        purchase = self.slots[self.current_index]
        assert purchase is not None
        return purchase


def sign_purchase(purchase: Purchase, private_key: Ed25519PrivateKey) -> Purchase:
    """The purchase with the server's Ed25519 signature (the key of ``purchase.key_version``)."""
    return replace(purchase, signature=private_key.sign(PURCHASE_CONTEXT + purchase.body()))


def derive_meter_key(master_key: bytes, meter_no: str) -> bytes:
    """The meter's own report key: HKDF-SHA256 of the caller's master key over the meter number."""
    _check_id("meter_no", meter_no)
    if len(master_key) < 16:
        raise ValueError("master key must be at least 16 bytes")
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=METER_KEY_SIZE,
        salt=METER_KEY_SALT,
        info=meter_no.encode("ascii"),
    )
    return hkdf.derive(master_key)


def _report_mac(meter_key: bytes, body: bytes) -> bytes:
    return hmac.new(meter_key, REPORT_CONTEXT + body, hashlib.sha256).digest()[:MAC_SIZE]


def seal_report(report: MeterReport, meter_key: bytes) -> MeterReport:
    """The report with the meter's MAC, as a meter writes it."""
    return replace(report, mac=_report_mac(meter_key, report.body()))


def _encode_header(header: Header) -> bytes:
    body = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        int(header.tag_type),
        header.key_version,
        header.replacement_count,
        _pack_id(header.card_no),
        _pack_id(header.meter_no),
        b"\x00\x00",
    )
    return body + _crc(body)


def _encode_slot(purchase: Purchase | None) -> bytes:
    if purchase is None:
        return bytes(SLOT_SIZE)
    if len(purchase.signature) != SIGNATURE_SIZE:
        raise ValueError("purchase is not signed")
    block = purchase.body() + purchase.signature
    return block + _crc(block)


def _encode_report(report: MeterReport | None) -> bytes:
    if report is None:
        return bytes(REPORT_SIZE)
    if len(report.mac) != MAC_SIZE:
        raise ValueError("report is not sealed")
    block = report.body() + report.mac
    return block + _crc(block)


def encode(image: CardImage) -> bytes:
    """The card's user memory for ``image``: exactly 504 bytes, zero padded."""
    raw = (
        _encode_header(image.header)
        + _encode_slot(image.slots[0])
        + _encode_slot(image.slots[1])
        + _encode_report(image.report)
    )
    return raw.ljust(IMAGE_SIZE, b"\x00")


def _decode_header(raw: bytes) -> Header:
    block = raw[HEADER_OFFSET : HEADER_OFFSET + HEADER_SIZE]
    magic, version, tag_type, key_version, replacement, card_no, meter_no, reserved = (
        _HEADER.unpack(block[:-4])
    )
    if magic != MAGIC:
        raise CardUnreadable(Reason.BAD_MAGIC, "not a Ranqi card (blank or foreign)")
    if _crc(block[:-4]) != block[-4:]:
        raise CardUnreadable(Reason.HEADER_CRC, "header CRC does not match")
    if version != FORMAT_VERSION:
        raise CardUnreadable(Reason.UNSUPPORTED_VERSION, f"format version {version}")
    if reserved != b"\x00\x00" or tag_type not in TagTypeHint._value2member_map_:
        raise CardUnreadable(Reason.MALFORMED, "header has unknown values")
    return Header(
        card_no=_unpack_id(card_no, "card number"),
        meter_no=_unpack_id(meter_no, "meter number"),
        key_version=key_version,
        replacement_count=replacement,
        tag_type=TagTypeHint(tag_type),
    )


def _decode_slot(
    block: bytes, name: str, header: Header, public_keys: Mapping[int, Ed25519PublicKey]
) -> tuple[Purchase | None, SlotStatus]:
    if not any(block):
        return None, SlotStatus.EMPTY
    if _crc(block[:-4]) != block[-4:]:
        return None, SlotStatus.TORN
    body, signature = block[: _SLOT_BODY.size], block[_SLOT_BODY.size : -4]
    generation, count, pending, issued, key_version, replacement, card_no, meter_no = (
        _SLOT_BODY.unpack(body)
    )
    public_key = public_keys.get(key_version)
    if public_key is None:
        raise CardRefused(Reason.UNKNOWN_KEY_VERSION, f"slot {name} signed with key {key_version}")
    try:
        public_key.verify(signature, PURCHASE_CONTEXT + body)
    except InvalidSignature:
        raise CardRefused(Reason.BAD_SIGNATURE, f"slot {name} signature is not valid") from None
    try:
        purchase = Purchase(
            generation=generation,
            card_no=_unpack_id(card_no, "card number"),
            meter_no=_unpack_id(meter_no, "meter number"),
            purchase_count=count,
            pending_volume=pending,
            issued_at=_from_seconds(issued),
            key_version=key_version,
            replacement_count=replacement,
            signature=signature,
        )
    except ValueError as error:  # a genuine signature over bad values: our bug, not a tear
        raise CardUnreadable(Reason.MALFORMED, f"slot {name}: {error}") from None
    if (purchase.card_no, purchase.meter_no, purchase.replacement_count) != (
        header.card_no,
        header.meter_no,
        header.replacement_count,
    ):
        raise CardRefused(
            Reason.CARD_MISMATCH,
            f"slot {name} belongs to card {purchase.card_no} / meter {purchase.meter_no} "
            f"/ replacement {purchase.replacement_count}",
        )
    return purchase, SlotStatus.VALID


def _decode_report(
    block: bytes, header: Header, meter_key: bytes | None
) -> tuple[MeterReport | None, ReportStatus]:
    if not any(block):
        return None, ReportStatus.BLANK
    if _crc(block[:-4]) != block[-4:]:
        return None, ReportStatus.TORN
    body, mac = block[: _REPORT_BODY.size], block[_REPORT_BODY.size : -4]
    if meter_key is not None and not hmac.compare_digest(mac, _report_mac(meter_key, body)):
        raise CardRefused(Reason.REPORT_MAC, "meter report MAC is not valid")
    seq, applied, remaining, used, purchased, at, valve, alarms, reserved, meter_no = (
        _REPORT_BODY.unpack(body)
    )
    if valve > 1 or reserved != b"\x00\x00" or alarms & ~int(ALL_ALARMS):
        raise CardUnreadable(Reason.MALFORMED, "meter report has unknown values")
    report = MeterReport(
        meter_no=_unpack_id(meter_no, "report meter number"),
        report_seq=seq,
        count_applied=applied,
        remaining=remaining,
        total_used=used,
        total_purchased=purchased,
        valve_open=bool(valve),
        alarms=Alarm(alarms),
        reported_at=_from_seconds(at),
        mac=mac,
    )
    if report.meter_no != header.meter_no:
        raise CardRefused(Reason.CARD_MISMATCH, f"report is from meter {report.meter_no}")
    status = ReportStatus.UNVERIFIED if meter_key is None else ReportStatus.VERIFIED
    return report, status


def decode(
    raw: bytes,
    *,
    public_keys: Mapping[int, Ed25519PublicKey],
    meter_key: bytes | None = None,
) -> CardImage:
    """Read and verify a card's 504-byte user memory; raise :class:`CardError` if unusable.

    ``public_keys`` maps signing key version to the server's public key;
    ``meter_key`` (server, meter) verifies the report, without it the report is unverified.
    """
    if len(raw) != IMAGE_SIZE:
        raise CardUnreadable(Reason.WRONG_LENGTH, f"image is {len(raw)} bytes, not {IMAGE_SIZE}")
    raw = bytes(raw)
    header = _decode_header(raw)
    decoded = [
        _decode_slot(raw[offset : offset + SLOT_SIZE], name, header, public_keys)
        for offset, name in zip(SLOT_OFFSETS, "AB", strict=True)
    ]
    (a, a_status), (b, b_status) = decoded
    if a is None and b is None:
        raise CardUnreadable(Reason.NO_VALID_SLOT, f"slot A {a_status}, slot B {b_status}")
    if a is not None and b is not None and a.generation == b.generation and a != b:
        raise CardUnreadable(Reason.AMBIGUOUS_SLOTS, f"both slots at generation {a.generation}")
    report, report_status = _decode_report(
        raw[REPORT_OFFSET : REPORT_OFFSET + REPORT_SIZE], header, meter_key
    )
    return CardImage(
        header=header,
        slots=(a, b),
        report=report,
        report_status=report_status,
        torn_slots=(a_status == SlotStatus.TORN, b_status == SlotStatus.TORN),
    )
