"""Loading paid gas onto cards: a kiosk's sync and confirm, exactly once.

A sync reads the card's image as a kiosk found it: the server verifies it, records
the meter's report it carries (credits the meter has taken become ``applied``, alarms
open safety cases), settles the card's outstanding write if there is one, and, when
credits await, issues one new write (a signed target image) under a row lock on the
card. A confirm with the read-back image equal to the target makes its credits
``loaded``. Operations take a session and explicit arguments, flush, never commit.

The card is the truth. Its current purchase slot tells what happened to an
outstanding write: the write's target slot (a lost confirm: complete it), the slot
the write was built on (torn or never written: abandon it and issue again), or
neither (refuse; staff look).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.orm import Session

import cardfmt
from models import credits as credit_ops
from models.accounts import Card, Meter, MeterReport
from models.errors import DomainError, NotFound
from models.orders import CardWrite, Credit
from models.staff import SafetyCase, audit
from models.states import CardState, CardWriteState, CaseState, CreditState

#: prefix of the HMAC input a tag password is derived from, so it means nothing else
TAG_PASSWORD_CONTEXT = b"ranqi ntag password v1\x00"
#: NTAG21x PWD (4 bytes) followed by PACK (2 bytes), as nfcpy's protect/authenticate take it
TAG_PASSWORD_SIZE = 6

#: meter report alarm → SafetyCase.kind
ALARM_KINDS: tuple[tuple[cardfmt.Alarm, str], ...] = (
    (cardfmt.Alarm.LEAK, "leak"),
    (cardfmt.Alarm.TAMPER, "tamper"),
    (cardfmt.Alarm.LOW_BATTERY, "low_battery"),
)

_REFUSED_STATES = {
    CardState.lost: "card_lost",
    CardState.replaced: "card_replaced",
    CardState.blacklisted: "card_blacklisted",
}


class CardImageError(DomainError):
    """The image is not a usable Ranqi card (unreadable, forged, foreign key): refused."""

    code = "card_unreadable"


class CardRefusedError(DomainError):
    """A card the server will not load: unknown, lost, replaced, blacklisted, or not this tag."""

    code = "card_refused"


class CardBusy(DomainError):
    """Another kiosk holds this card's outstanding write: try again in a moment."""

    code = "card_busy"


class CardConflict(DomainError):
    """The card or read-back does not fit what the server issued; nothing was changed."""

    code = "card_conflict"


@dataclass(frozen=True)
class CardKeys:
    """The server's card keys: what signs purchases, seals meter keys and tag passwords."""

    #: Ed25519 signing keys by key version (old versions stay to verify old cards)
    signing_keys: Mapping[int, Ed25519PrivateKey]
    #: the version new purchases are signed with
    signing_version: int
    #: master key the per-meter report keys are derived from
    meter_master_key: bytes
    #: master key the per-card NTAG passwords are derived from
    tag_master_key: bytes

    def __post_init__(self) -> None:
        if self.signing_version not in self.signing_keys:
            raise ValueError(f"no signing key of version {self.signing_version}")
        for name in ("meter_master_key", "tag_master_key"):
            if len(getattr(self, name)) < 32:
                raise ValueError(f"{name} must be at least 32 bytes")

    @cached_property
    def public_keys(self) -> dict[int, Ed25519PublicKey]:
        """Public keys by version: what verifies a card's purchase slots."""
        return {version: key.public_key() for version, key in self.signing_keys.items()}

    @property
    def signing_key(self) -> Ed25519PrivateKey:
        """The key new purchases are signed with."""
        return self.signing_keys[self.signing_version]

    def meter_key(self, meter_no: str) -> bytes:
        """The meter's own report key."""
        return cardfmt.derive_meter_key(self.meter_master_key, meter_no)

    def tag_password(self, card_no: str, key_version: int) -> bytes:
        """The card's NTAG password and acknowledge (PWD ‖ PACK), handed out only for a write."""
        message = TAG_PASSWORD_CONTEXT + key_version.to_bytes(2, "big") + card_no.encode("ascii")
        digest = hmac.new(self.tag_master_key, message, hashlib.sha256).digest()
        return digest[:TAG_PASSWORD_SIZE]


@dataclass
class SyncResult:
    """What a sync found and did, for the kiosk's screen and its next step."""

    card: Card
    image: cardfmt.CardImage
    #: the new write the kiosk should make, or None when nothing awaits
    write: CardWrite | None = None
    #: the pages to write, (page, 4 bytes), tear-safe order
    plan: list[tuple[int, bytes]] = field(default_factory=list)
    tag_password: bytes | None = None
    #: gas this write adds to the card, 0.01 m³
    loading: int = 0
    #: an outstanding write the card shows done (a lost confirm), completed now
    completed: CardWrite | None = None
    #: an outstanding write the card never got (torn or never written), abandoned now
    abandoned: CardWrite | None = None
    #: the meter report recorded by this sync (None: none on the card, or seen before)
    report: MeterReport | None = None
    #: credits this sync moved loaded → applied
    applied: list[Credit] = field(default_factory=list)
    #: safety cases this sync opened
    cases: list[SafetyCase] = field(default_factory=list)


@dataclass(frozen=True)
class ConfirmResult:
    """A confirmed write; ``repeated`` when it had been confirmed before."""

    write: CardWrite
    repeated: bool


def decode_image(
    raw: bytes, keys: CardKeys, *, meter_key: bytes | None = None
) -> cardfmt.CardImage:
    """Decode and verify ``raw``; a card the format refuses becomes a :class:`CardImageError`."""
    try:
        return cardfmt.decode(raw, public_keys=keys.public_keys, meter_key=meter_key)
    except cardfmt.CardRefused as error:
        raise CardImageError(str(error), code="card_refused", reason=error.reason.value) from None
    except cardfmt.CardError as error:
        raise CardImageError(
            str(error), code="card_unreadable", reason=error.reason.value
        ) from None


def lock_card(session: Session, card_no: str) -> Card | None:
    """The card by number, locked for this transaction (one sync or confirm at a time)."""
    return _lock_card_where(session, Card.card_no == card_no)


def _lock_card_where(session: Session, condition: ColumnElement[bool]) -> Card | None:
    if session.get_bind().dialect.name == "sqlite":
        # SQLite ignores FOR UPDATE; a write as the transaction's first statement takes
        # the database's write lock and waits for it (busy_timeout) instead of failing
        # later on a stale snapshot.
        session.execute(
            update(Card)
            .where(condition)
            .values(purchase_count=Card.purchase_count)
            .execution_options(synchronize_session=False)
        )
    # populate_existing: re-read under the lock, another kiosk may have just changed it
    return session.scalar(
        select(Card).where(condition).with_for_update().execution_options(populate_existing=True)
    )


def _check_card(card: Card | None, header: cardfmt.Header, tag_uid: str) -> Card:
    if card is None:
        raise CardRefusedError(f"card {header.card_no} is not known", code="unknown_card")
    state = CardState(card.state)
    if state in _REFUSED_STATES:
        raise CardRefusedError(f"card {card.card_no} is {state.value}", code=_REFUSED_STATES[state])
    # A card without a recorded UID (issued before UIDs were kept) is judged by its image alone.
    if card.tag_uid is not None and card.tag_uid.lower() != tag_uid.lower():
        raise CardRefusedError(
            f"card {card.card_no} is registered to another tag", code="tag_uid_mismatch"
        )
    if (header.meter_no, header.replacement_count) != (
        card.meter.meter_no,
        card.replacement_count,
    ):
        raise CardRefusedError(
            f"card {card.card_no} names meter {header.meter_no} / replacement "
            f"{header.replacement_count}; the server has {card.meter.meter_no} / "
            f"{card.replacement_count}",
            code="card_mismatch",
        )
    return card


def sync_card(
    session: Session,
    *,
    raw: bytes,
    tag_uid: str,
    kiosk_id: int | None,
    keys: CardKeys,
    now: dt.datetime,
    hold: dt.timedelta,
) -> SyncResult:
    """A kiosk read ``raw`` from the tag ``tag_uid``: record, settle, and issue a write if due.

    ``hold`` is how long another kiosk's outstanding write is taken to be in progress
    (the answer is :class:`CardBusy`); after it, or from the same kiosk, a card that
    still shows the old state means the write was torn or never made.
    """
    header = decode_image(raw, keys).header
    card = _check_card(lock_card(session, header.card_no), header, tag_uid)
    meter = card.meter
    image = decode_image(raw, keys, meter_key=keys.meter_key(meter.meter_no))
    result = SyncResult(card=card, image=image)

    outstanding = session.scalar(
        select(CardWrite).where(
            CardWrite.card_id == card.id, CardWrite.state == CardWriteState.issued.value
        )
    )
    if outstanding is not None:
        _settle(session, outstanding, image, keys, kiosk_id=kiosk_id, now=now, hold=hold)
        if outstanding.state == CardWriteState.confirmed.value:
            result.completed = outstanding
        else:
            result.abandoned = outstanding
    current = image.current
    if (current.purchase_count, current.pending_volume) != (
        card.purchase_count,
        card.pending_volume,
    ):
        # Only the server signs purchases and every write is recorded: a card showing
        # another state is a restored copy or a bug, and loading onto it could make
        # credits look applied that the meter never took.
        raise CardConflict(
            f"card {card.card_no} shows N={current.purchase_count} pending "
            f"{current.pending_volume}; the server has N={card.purchase_count} pending "
            f"{card.pending_volume}",
            code="card_out_of_sync",
        )

    if image.report is not None and image.report_status is cardfmt.ReportStatus.VERIFIED:
        result.report, result.cases = record_report(session, meter, card, image.report, now=now)
    result.applied = mark_applied_credits(session, meter, now=now)

    awaiting = list(
        session.scalars(
            select(Credit)
            .where(Credit.meter_id == meter.id, Credit.state == CreditState.awaiting_load.value)
            .order_by(Credit.id)
            .with_for_update()
        )
    )
    if not awaiting:
        return result
    loading = sum(credit.volume for credit in awaiting)
    target = cardfmt.next_purchase(
        image,
        add_volume=loading,
        issued_at=now,
        signing_key=keys.signing_key,
        key_version=keys.signing_version,
        known_applied_count=meter.applied_count,
    )
    target_raw = cardfmt.encode(target)
    write = CardWrite(
        write_id=secrets.token_hex(16),
        card_id=card.id,
        kiosk_id=kiosk_id,
        purchase_count=target.current.purchase_count,
        pending_volume=target.current.pending_volume,
        target_image=target_raw,
        issued_at=now,
        credits=awaiting,
    )
    session.add(write)
    session.flush()  # the unique "one issued write per card" index speaks here
    result.write = write
    result.plan = cardfmt.plan_write(bytes(raw), target_raw)
    result.tag_password = keys.tag_password(card.card_no, header.key_version)
    result.loading = loading
    return result


def _settle(
    session: Session,
    write: CardWrite,
    image: cardfmt.CardImage,
    keys: CardKeys,
    *,
    kiosk_id: int | None,
    now: dt.datetime,
    hold: dt.timedelta,
) -> None:
    """Decide an outstanding write's fate from the card's current slot."""
    target = decode_image(write.target_image, keys)
    base = target.slots[1 - target.current_index]
    if image.current == target.current:
        complete_write(session, write, now=now)
        return
    if base is not None and image.current == base:
        if write.kiosk_id != kiosk_id and now - write.issued_at < hold:
            raise CardBusy(
                "another kiosk is writing this card; try again in a moment",
                retry_after=max(1, int((write.issued_at + hold - now).total_seconds())),
            )
        write.transition_to(CardWriteState.abandoned)
        session.add(
            audit(
                f"kiosk:{kiosk_id}" if kiosk_id is not None else "system",
                "card_write.abandoned",
                f"card_write:{write.write_id}",
                card_no=write.card.card_no,
                issued_by_kiosk=write.kiosk_id,
            )
        )
        session.flush()
        return
    raise CardConflict(
        f"card {write.card.card_no} shows neither the outstanding write "
        f"{write.write_id} nor the state it was built on",
        code="card_state_unknown",
        write_id=write.write_id,
    )


def complete_write(session: Session, write: CardWrite, *, now: dt.datetime) -> None:
    """The card carries the write's target: the write is confirmed, its credits loaded."""
    write.transition_to(CardWriteState.confirmed)
    write.confirmed_at = now
    credit_ops.mark_loaded(session, write.credits, purchase_count=write.purchase_count, at=now)
    card = write.card
    card.purchase_count = write.purchase_count
    card.pending_volume = write.pending_volume
    card.last_image = write.target_image
    session.flush()


def confirm_write(
    session: Session, *, write_id: str, raw: bytes, kiosk_id: int | None, now: dt.datetime
) -> ConfirmResult:
    """A kiosk read back ``raw`` after writing: equal to the target, the credits are loaded.

    Any authenticated kiosk may confirm: the read-back, not who asks, proves what the
    card carries (the next sync would complete the write from the card anyway).
    """
    # lock the card first, as a sync does, so that the two never wait for each other
    card_of_write = select(CardWrite.card_id).where(CardWrite.write_id == write_id)
    _lock_card_where(session, Card.id == card_of_write.scalar_subquery())
    write = session.scalar(
        select(CardWrite)
        .where(CardWrite.write_id == write_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if write is None:
        raise NotFound(f"no card write {write_id!r}", code="unknown_write")
    state = CardWriteState(write.state)
    if state is CardWriteState.abandoned:
        raise CardConflict(
            f"card write {write_id} was abandoned; tap the card again", code="write_abandoned"
        )
    if bytes(raw) != write.target_image:
        raise CardConflict(
            f"the card does not show card write {write_id}'s target; tap the card again",
            code="readback_mismatch",
        )
    if state is CardWriteState.confirmed:
        return ConfirmResult(write=write, repeated=True)
    if kiosk_id != write.kiosk_id:
        # allowed (the read-back is the proof), but unusual enough for staff to see
        session.add(
            audit(
                f"kiosk:{kiosk_id}" if kiosk_id is not None else "system",
                "card_write.confirmed_for_other_kiosk",
                f"card_write:{write.write_id}",
                issued_to_kiosk=write.kiosk_id,
            )
        )
    complete_write(session, write, now=now)
    return ConfirmResult(write=write, repeated=False)


def record_report(
    session: Session, meter: Meter, card: Card, report: cardfmt.MeterReport, *, now: dt.datetime
) -> tuple[MeterReport | None, list[SafetyCase]]:
    """Store a verified meter report once per (meter, report_seq); open cases for its alarms.

    Returns the new row (None if the report was seen before) and the cases opened.
    """
    seen = session.scalar(
        select(MeterReport.id).where(
            MeterReport.meter_id == meter.id, MeterReport.report_seq == report.report_seq
        )
    )
    if seen is not None:
        return None, []
    latest_seq = session.scalar(
        select(func.max(MeterReport.report_seq)).where(MeterReport.meter_id == meter.id)
    )
    row = MeterReport(
        meter_id=meter.id,
        card_id=card.id,
        report_seq=report.report_seq,
        applied_count=report.count_applied,
        remaining=report.remaining,
        total_used=report.total_used,
        total_purchased=report.total_purchased,
        valve_open=report.valve_open,
        alarms=",".join(kind for alarm, kind in ALARM_KINDS if alarm in report.alarms),
        reported_at=report.reported_at,
        received_at=now,
    )
    session.add(row)
    session.flush()
    # the meter's count only grows; an older report arriving late must not move it back
    meter.applied_count = max(meter.applied_count, report.count_applied)
    if latest_seq is None or report.report_seq > latest_seq:
        meter.last_remaining = report.remaining
        meter.last_report_at = report.reported_at
    cases: list[SafetyCase] = []
    for alarm, kind in ALARM_KINDS:
        if alarm not in report.alarms:
            continue
        # one open case per meter and kind: a leaking meter reported on every tap is one case
        already_open = session.scalar(
            select(SafetyCase.id).where(
                SafetyCase.meter_id == meter.id,
                SafetyCase.kind == kind,
                SafetyCase.state.in_([CaseState.open.value, CaseState.in_progress.value]),
            )
        )
        if already_open is None:
            case = SafetyCase(
                meter_id=meter.id,
                report_id=row.id,
                kind=kind,
                note=f"meter {meter.meter_no} reported {kind} (report {report.report_seq})",
                opened_at=now,
            )
            session.add(case)
            cases.append(case)
    session.flush()
    return row, cases


def mark_applied_credits(session: Session, meter: Meter, *, now: dt.datetime) -> list[Credit]:
    """Loaded credits whose purchase count the meter has applied: loaded → applied."""
    taken: Sequence[Credit] = session.scalars(
        select(Credit)
        .where(
            Credit.meter_id == meter.id,
            Credit.state == CreditState.loaded.value,
            Credit.purchase_count <= meter.applied_count,
        )
        .order_by(Credit.id)
    ).all()
    if taken:
        credit_ops.mark_applied(session, taken, at=now)
        session.flush()
    return list(taken)
