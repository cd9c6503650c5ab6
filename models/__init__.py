"""The Ranqi domain: typed SQLAlchemy tables and the operations that change them.

No Flask here. Operations take a session and explicit arguments, flush, never commit.
Importing this package registers every table on :data:`Base.metadata`.
"""

from __future__ import annotations

from models.accounts import Account, Card, Meter, MeterReport
from models.base import Base, utcnow
from models.ledger import LedgerEntry, LedgerLine
from models.orders import (
    CardWrite,
    Credit,
    Order,
    PaymentConflict,
    PaymentEvent,
    Refund,
)
from models.org import Branch, Company, CustomerCategory, ServiceNotice
from models.staff import AuditLog, Kiosk, KioskToken, Operator, Role, SafetyCase
from models.tariffs import DiscountPolicy, Tariff, TariffTier

__all__ = [
    "Account",
    "AuditLog",
    "Base",
    "Branch",
    "Card",
    "CardWrite",
    "Company",
    "Credit",
    "CustomerCategory",
    "DiscountPolicy",
    "Kiosk",
    "KioskToken",
    "LedgerEntry",
    "LedgerLine",
    "Meter",
    "MeterReport",
    "Operator",
    "Order",
    "PaymentConflict",
    "PaymentEvent",
    "Refund",
    "Role",
    "SafetyCase",
    "ServiceNotice",
    "Tariff",
    "TariffTier",
    "utcnow",
]
