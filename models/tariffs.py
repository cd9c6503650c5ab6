"""Tariffs per branch and customer category: tiers (阶梯), limits, discount policies."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (
    CheckConstraint,
    Date,
    ForeignKey,
    Numeric,
    String,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship

from models.base import Base, BigIntPK, UTCDateTime, utcnow
from models.org import Branch, CustomerCategory

#: Prices are yuan per m³ with up to four decimals, stored exactly.
Price = Numeric(10, 4, asdecimal=True)


class Tariff(Base):
    """The price schedule a branch applies to a customer category from a date on.

    The tariff in force at a moment is the one with the latest ``effective_from``
    not after that moment's local (Asia/Shanghai) date.
    """

    __tablename__ = "tariff"
    __table_args__ = (
        UniqueConstraint("branch_id", "category_id", "effective_from"),
        CheckConstraint("cycle_start_month BETWEEN 1 AND 12", name="cycle_month"),
        CheckConstraint("min_purchase > 0", name="min_purchase_positive"),
        CheckConstraint("max_purchase >= min_purchase", name="max_not_below_min"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    #: stable code used by imports ("BJ-RES-2026")
    code: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    branch_id: Mapped[int] = mapped_column(ForeignKey("branch.id"))
    category_id: Mapped[int] = mapped_column(ForeignKey("customer_category.id"))
    effective_from: Mapped[dt.date] = mapped_column(Date)
    #: the yearly tier cycle starts on the 1st of this month
    cycle_start_month: Mapped[int] = mapped_column(default=1)
    #: smallest purchase, 0.01 m³
    min_purchase: Mapped[int] = mapped_column(default=100)
    #: largest purchase per order, 0.01 m³
    max_purchase: Mapped[int] = mapped_column(default=30000)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    branch: Mapped[Branch] = relationship()
    category: Mapped[CustomerCategory] = relationship()
    tiers: Mapped[list[TariffTier]] = relationship(
        back_populates="tariff", order_by="TariffTier.position", cascade="all, delete-orphan"
    )
    discounts: Mapped[list[DiscountPolicy]] = relationship(
        back_populates="tariff", order_by="DiscountPolicy.id", cascade="all, delete-orphan"
    )


class TariffTier(Base):
    """One tier: gas bought in the cycle up to ``upper_bound`` costs ``price``."""

    __tablename__ = "tariff_tier"
    __table_args__ = (
        UniqueConstraint("tariff_id", "position"),
        CheckConstraint("price >= 0", name="price_nonnegative"),
        CheckConstraint("upper_bound IS NULL OR upper_bound > 0", name="upper_bound_positive"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tariff_id: Mapped[int] = mapped_column(ForeignKey("tariff.id"))
    #: 1 for the first tier
    position: Mapped[int] = mapped_column()
    #: cumulative cycle volume where this tier ends, 0.01 m³; NULL for the last tier
    upper_bound: Mapped[int | None] = mapped_column(default=None)
    #: yuan per m³
    price: Mapped[Decimal] = mapped_column(Price)

    tariff: Mapped[Tariff] = relationship(back_populates="tiers")


class DiscountKind(StrEnum):
    #: pay ``percent_off`` percent less on every part of the purchase
    percentage = "percentage"
    #: the first ``volume`` of each cycle is free (低保户 allowance)
    free_allowance = "free_allowance"
    #: every tier boundary moves up by ``volume`` for households of ``min_household_size``+
    tier_extension = "tier_extension"


class DiscountEligibility(StrEnum):
    everyone = "everyone"
    subsidised = "subsidised"
    large_household = "large_household"


class DiscountPolicy(Base):
    """A discount attached to a tariff, for the accounts it names."""

    __tablename__ = "discount_policy"
    __table_args__ = (
        CheckConstraint(
            "percent_off IS NULL OR (percent_off > 0 AND percent_off < 100)", name="percent_range"
        ),
        CheckConstraint("volume IS NULL OR volume > 0", name="volume_positive"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    tariff_id: Mapped[int] = mapped_column(ForeignKey("tariff.id"))
    kind: Mapped[str] = mapped_column(String(24))
    eligibility: Mapped[str] = mapped_column(String(24), default=DiscountEligibility.everyone.value)
    #: for ``percentage``: percent off, e.g. 5 for 5 %
    percent_off: Mapped[Decimal | None] = mapped_column(Numeric(5, 2), default=None)
    #: for ``free_allowance`` and ``tier_extension``: a volume, 0.01 m³
    volume: Mapped[int | None] = mapped_column(default=None)
    #: for ``large_household`` eligibility: the smallest household that qualifies
    min_household_size: Mapped[int | None] = mapped_column(default=None)

    tariff: Mapped[Tariff] = relationship(back_populates="discounts")


def tariff_in_force(
    session: Session, *, branch_id: int, category_id: int, on: dt.date
) -> Tariff | None:
    """The tariff a branch applies to a category on local date ``on`` (latest effective)."""
    return session.scalar(
        select(Tariff)
        .where(
            Tariff.branch_id == branch_id,
            Tariff.category_id == category_id,
            Tariff.effective_from <= on,
        )
        .order_by(Tariff.effective_from.desc())
        .limit(1)
    )


def tariffs_in_force(session: Session, *, branch_id: int, on: dt.date) -> list[Tariff]:
    """Every category's tariff in force at a branch on ``on`` (for the public price list)."""
    result = []
    categories = session.scalars(
        select(Tariff.category_id).where(Tariff.branch_id == branch_id).distinct()
    )
    for category_id in categories:
        tariff = tariff_in_force(session, branch_id=branch_id, category_id=category_id, on=on)
        if tariff is not None:
            result.append(tariff)
    return sorted(result, key=lambda t: t.category_id)
