"""The purchase rules: issuing a card and computing the next image the server signs.

The host writes absolute state, never an increment. The card's pending volume
is spent when it is 0 or when the meter's count applied (its report, or what
the server already knows from earlier reports) has reached the card's N:

* spent: N advances to N + 1 and the pending volume is the new credits alone;
* not spent: N stays and the new credits are added to the pending volume.

The meter applies N only when N is its own count + 1, so either way it takes
the whole pending volume exactly once, and writing the same image again (a lost
confirm, a retried tap) changes nothing. A card is issued with pending volume 0
only at the meter's own count (a new meter: 0), so "pending 0" and "meter has
applied N" never disagree.

One gap the format alone cannot close: a meter that applies N and is pulled
before its report is written leaves the old report (count N - 1) on the card;
the next load then adds to N, which the meter has already taken, and refuses.
Its next report (count N) makes the card's pending volume look spent, though
the top-up never reached the meter. Two remedies, both outside this module: the
meter remembers the volume it applied under its own N and takes the difference
when it sees the same N with a larger signed pending volume; and the server
checks each report's total purchased against the loads it believes applied.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cardfmt.image import CardImage, Header, Purchase, ReportStatus, sign_purchase


def issue_card(
    header: Header,
    *,
    issued_at: dt.datetime,
    signing_key: Ed25519PrivateKey,
    key_version: int,
    purchase_count: int = 0,
    pending_volume: int = 0,
) -> CardImage:
    """A new card or a replacement (补卡): the header and slot A at generation 1.

    A replacement carries the last known state: with gas still unapplied, the old
    N and its pending volume; otherwise the meter's count and pending volume 0.
    """
    purchase = Purchase(
        generation=1,
        card_no=header.card_no,
        meter_no=header.meter_no,
        purchase_count=purchase_count,
        pending_volume=pending_volume,
        issued_at=issued_at.replace(microsecond=0),
        key_version=key_version,
        replacement_count=header.replacement_count,
    )
    return CardImage(header=header, slots=(sign_purchase(purchase, signing_key), None))


def applied_count(image: CardImage, *, known_applied_count: int = 0) -> int:
    """The highest purchase count the meter is known to have applied.

    Uses the card's report (which must have been verified with the meter key)
    and what the caller already knows from earlier reports. A torn report says nothing.
    """
    applied = known_applied_count
    if image.report is not None:
        if image.report_status is not ReportStatus.VERIFIED:
            raise ValueError("the meter report must be verified with the meter key first")
        applied = max(applied, image.report.count_applied)
    return applied


def pending_spent(image: CardImage, *, known_applied_count: int = 0) -> bool:
    """Whether the meter has taken the card's pending volume (or there is none)."""
    current = image.current
    return current.pending_volume == 0 or (
        applied_count(image, known_applied_count=known_applied_count) >= current.purchase_count
    )


def next_purchase(
    image: CardImage,
    *,
    add_volume: int,
    issued_at: dt.datetime,
    signing_key: Ed25519PrivateKey,
    key_version: int,
    known_applied_count: int = 0,
) -> CardImage:
    """The image to write after adding ``add_volume`` (0.01 m³) of paid gas to ``image``.

    Writes the slot that is not current with generation + 1 and leaves the rest
    of the card as it was; see the module docstring for when N advances.
    """
    if isinstance(add_volume, bool) or not isinstance(add_volume, int) or add_volume <= 0:
        raise ValueError(f"add_volume must be a positive integer, got {add_volume!r}")
    current = image.current
    if pending_spent(image, known_applied_count=known_applied_count):
        count, pending = current.purchase_count + 1, add_volume
    else:
        count, pending = current.purchase_count, current.pending_volume + add_volume
    purchase = replace(
        current,
        generation=current.generation + 1,
        purchase_count=count,
        pending_volume=pending,
        issued_at=issued_at.replace(microsecond=0),
        key_version=key_version,
        signature=b"",
    )
    signed = sign_purchase(purchase, signing_key)
    slots = (signed, current) if image.current_index == 1 else (current, signed)
    return replace(image, slots=slots, torn_slots=(False, False))
