"""Ranqi card format: the IC card image shared by the server and the kiosk.

Pure Python (no Flask, no database). :mod:`cardfmt.image` holds the byte
layout, the codec and the keys; :mod:`cardfmt.rules` the purchase rules;
:mod:`cardfmt.writes` the page-level write plan.
"""

from __future__ import annotations

from cardfmt.image import (
    FIRST_PAGE,
    IMAGE_SIZE,
    PAGE_SIZE,
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
    decode,
    derive_meter_key,
    encode,
    seal_report,
    sign_purchase,
)
from cardfmt.rules import applied_count, issue_card, next_purchase, pending_spent
from cardfmt.writes import changed_pages, plan_write

__all__ = [
    "FIRST_PAGE",
    "IMAGE_SIZE",
    "PAGE_SIZE",
    "Alarm",
    "CardError",
    "CardImage",
    "CardRefused",
    "CardUnreadable",
    "Header",
    "MeterReport",
    "Purchase",
    "Reason",
    "ReportStatus",
    "SlotStatus",
    "TagTypeHint",
    "applied_count",
    "changed_pages",
    "decode",
    "derive_meter_key",
    "encode",
    "issue_card",
    "next_purchase",
    "pending_spent",
    "plan_write",
    "seal_report",
    "sign_purchase",
]
