"""Every state an entity can be in, and the one transition table per entity.

A state change goes through :func:`transition`, which refuses a move the table
does not list (a second completion, a refund of gas that reached a card...).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, TypeVar


class OrderState(StrEnum):
    created = "created"
    paying = "paying"
    paid = "paid"
    refunding = "refunding"
    refunded = "refunded"
    closed = "closed"


class CreditState(StrEnum):
    awaiting_load = "awaiting_load"
    loaded = "loaded"
    applied = "applied"
    refunded = "refunded"


class CardState(StrEnum):
    active = "active"
    lost = "lost"
    replaced = "replaced"
    blacklisted = "blacklisted"


class CardWriteState(StrEnum):
    issued = "issued"  #: target image handed to a kiosk, not yet read back
    confirmed = "confirmed"  #: read back equal to the target: credits are on the card
    abandoned = "abandoned"  #: never confirmed and superseded (torn or lost write)


class RefundState(StrEnum):
    requested = "requested"
    approved = "approved"
    rejected = "rejected"
    processing = "processing"
    succeeded = "succeeded"
    failed = "failed"


class ConflictState(StrEnum):
    open = "open"
    resolved = "resolved"


class CaseState(StrEnum):
    open = "open"
    in_progress = "in_progress"
    closed = "closed"


class MeterKind(StrEnum):
    ic_card = "ic_card"
    iot = "iot"
    mechanical = "mechanical"


class MeterStatus(StrEnum):
    active = "active"
    suspended = "suspended"
    removed = "removed"


class TagType(StrEnum):
    ntag215 = "ntag215"
    ntag216 = "ntag216"
    felica = "felica"


S = TypeVar("S", bound=StrEnum)

ORDER_TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    # A notify may arrive before we have recorded that the payment started.
    OrderState.created: frozenset({OrderState.paying, OrderState.paid, OrderState.closed}),
    OrderState.paying: frozenset({OrderState.paid, OrderState.closed}),
    OrderState.paid: frozenset({OrderState.refunding}),
    # A refund the provider rejects leaves the order paid.
    OrderState.refunding: frozenset({OrderState.refunded, OrderState.paid}),
    OrderState.refunded: frozenset(),
    OrderState.closed: frozenset(),
}

CREDIT_TRANSITIONS: dict[CreditState, frozenset[CreditState]] = {
    CreditState.awaiting_load: frozenset({CreditState.loaded, CreditState.refunded}),
    CreditState.loaded: frozenset({CreditState.applied}),
    CreditState.applied: frozenset(),
    CreditState.refunded: frozenset(),
}

CARD_TRANSITIONS: dict[CardState, frozenset[CardState]] = {
    CardState.active: frozenset({CardState.lost, CardState.replaced, CardState.blacklisted}),
    CardState.lost: frozenset({CardState.active, CardState.replaced, CardState.blacklisted}),
    CardState.replaced: frozenset(),
    CardState.blacklisted: frozenset(),
}

CARD_WRITE_TRANSITIONS: dict[CardWriteState, frozenset[CardWriteState]] = {
    CardWriteState.issued: frozenset({CardWriteState.confirmed, CardWriteState.abandoned}),
    CardWriteState.confirmed: frozenset(),
    CardWriteState.abandoned: frozenset(),
}

REFUND_TRANSITIONS: dict[RefundState, frozenset[RefundState]] = {
    RefundState.requested: frozenset({RefundState.approved, RefundState.rejected}),
    RefundState.approved: frozenset({RefundState.processing}),
    RefundState.processing: frozenset({RefundState.succeeded, RefundState.failed}),
    RefundState.rejected: frozenset(),
    RefundState.succeeded: frozenset(),
    RefundState.failed: frozenset(),
}

CONFLICT_TRANSITIONS: dict[ConflictState, frozenset[ConflictState]] = {
    ConflictState.open: frozenset({ConflictState.resolved}),
    ConflictState.resolved: frozenset(),
}

CASE_TRANSITIONS: dict[CaseState, frozenset[CaseState]] = {
    CaseState.open: frozenset({CaseState.in_progress, CaseState.closed}),
    CaseState.in_progress: frozenset({CaseState.closed}),
    CaseState.closed: frozenset(),
}


class Stateful(Protocol):
    state: str


def check_transition(table: dict[S, frozenset[S]], current: S, new: S) -> None:
    """Raise :class:`InvalidTransition` unless ``table`` allows ``current -> new``."""
    from models.errors import InvalidTransition

    if new not in table[current]:
        raise InvalidTransition(
            f"cannot move from {current.value} to {new.value}",
            current=current.value,
            requested=new.value,
        )
