"""Writing an image to a tag: only the pages that change, in an order that survives a tear."""

from __future__ import annotations

import zlib

from cardfmt.image import (
    FIRST_PAGE,
    HEADER_OFFSET,
    HEADER_SIZE,
    PAGE_SIZE,
    SLOT_OFFSETS,
    SLOT_SIZE,
)


def changed_pages(old: bytes, new: bytes, first_page: int = FIRST_PAGE) -> list[tuple[int, bytes]]:
    """The 4-byte pages of ``new`` that differ from ``old``, as (page number, data), in order."""
    if len(old) != len(new) or len(new) % PAGE_SIZE:
        raise ValueError("images must have the same length, a multiple of 4 bytes")
    return [
        (first_page + offset // PAGE_SIZE, new[offset : offset + PAGE_SIZE])
        for offset in range(0, len(new), PAGE_SIZE)
        if old[offset : offset + PAGE_SIZE] != new[offset : offset + PAGE_SIZE]
    ]


def _slot_generation(raw: bytes, offset: int) -> int:
    """The generation of a slot whose CRC holds, or -1 (empty or torn); no signature check."""
    block = raw[offset : offset + SLOT_SIZE]
    if len(block) != SLOT_SIZE or not any(block):
        return -1
    if zlib.crc32(block[:-4]).to_bytes(4, "big") != block[-4:]:
        return -1
    return int.from_bytes(block[:4], "big")


def plan_write(old: bytes, new: bytes, first_page: int = FIRST_PAGE) -> list[tuple[int, bytes]]:
    """The changed pages of ``new`` over ``old``, ordered so that a tear leaves a valid card.

    First the slot that is not current on the card (the old state stays readable
    until it is complete), then the rest, and the header last (it changes only
    when a card is issued). A write that changes the card's current slot is refused.
    """
    pages = changed_pages(old, new, first_page)
    generations = [_slot_generation(old, offset) for offset in SLOT_OFFSETS]
    current = 0 if generations[0] >= generations[1] else 1
    current_pages = range(
        first_page + SLOT_OFFSETS[current] // PAGE_SIZE,
        first_page + (SLOT_OFFSETS[current] + SLOT_SIZE) // PAGE_SIZE,
    )
    if generations[current] >= 0 and any(page in current_pages for page, _ in pages):
        # a tear inside the current slot would leave only the older state: never safe
        raise ValueError("the write would overwrite the card's current purchase slot")
    # the slot that replaces the current state goes first, the header last
    rank_by_region = [
        (SLOT_OFFSETS[1 - current], SLOT_SIZE, 0),
        (HEADER_OFFSET, HEADER_SIZE, 3),
    ]

    def rank(page: tuple[int, bytes]) -> tuple[int, int]:
        offset = (page[0] - first_page) * PAGE_SIZE
        for start, size, region_rank in rank_by_region:
            if start <= offset < start + size:
                return region_rank, page[0]
        return 2, page[0]

    return sorted(pages, key=rank)
