"""Accounts (户号), their meters (一户多表) and IC cards, and meter reports."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import (
    CheckConstraint,
    Date,
    ForeignKey,
    LargeBinary,
    String,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, BigIntPK, UTCDateTime, utcnow
from models.org import Branch, CustomerCategory
from models.states import (
    CARD_TRANSITIONS,
    CardState,
    MeterKind,
    MeterStatus,
    TagType,
    check_transition,
)


class Account(Base):
    """A household or business account, identified to residents by its 户号."""

    __tablename__ = "account"
    __table_args__ = (CheckConstraint("household_size >= 1", name="household_size_positive"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    #: 户号, what residents type
    account_no: Mapped[str] = mapped_column(String(32), unique=True)
    holder_name: Mapped[str] = mapped_column(String(100))
    #: registered phone; its last four digits are the residents' second factor
    phone: Mapped[str] = mapped_column(String(32))
    address: Mapped[str] = mapped_column(String(300))
    branch_id: Mapped[int] = mapped_column(ForeignKey("branch.id"), index=True)
    category_id: Mapped[int] = mapped_column(ForeignKey("customer_category.id"))
    household_size: Mapped[int] = mapped_column(default=1)
    #: 低保户: entitled to the tariff's subsidised allowance
    subsidised: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    branch: Mapped[Branch] = relationship()
    category: Mapped[CustomerCategory] = relationship()
    meters: Mapped[list[Meter]] = relationship(back_populates="account", order_by="Meter.id")


class Meter(Base):
    """A gas meter. IC-card meters take gas from cards and report back through them."""

    __tablename__ = "meter"
    __table_args__ = (
        CheckConstraint("capacity > 0", name="capacity_positive"),
        CheckConstraint("opening_cycle_volume >= 0", name="opening_volume_nonnegative"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    meter_no: Mapped[str] = mapped_column(String(32), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default=MeterKind.ic_card.value)
    #: 表内充值上限, in 0.01 m³: the most gas the meter can hold
    capacity: Mapped[int] = mapped_column(default=99999)
    status: Mapped[str] = mapped_column(String(16), default=MeterStatus.active.value)
    #: purchases the meter has applied (its own count N), as last reported
    applied_count: Mapped[int] = mapped_column(default=0)
    #: gas left in the meter at the last report, 0.01 m³
    last_remaining: Mapped[int | None] = mapped_column(default=None)
    last_report_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    #: opening balance carried over from the previous system: gas bought in the cycle
    #: that starts on ``opening_cycle_start``, 0.01 m³ (counts towards the tiers)
    opening_cycle_volume: Mapped[int] = mapped_column(default=0)
    opening_cycle_start: Mapped[dt.date | None] = mapped_column(Date, default=None)

    account: Mapped[Account] = relationship(back_populates="meters")
    cards: Mapped[list[Card]] = relationship(back_populates="meter", order_by="Card.id")

    @property
    def active_card(self) -> Card | None:
        """The card in use, if any."""
        for card in self.cards:
            if card.state == CardState.active:
                return card
        return None


class Card(Base):
    """An NFC IC card bound to one meter."""

    __tablename__ = "card"
    __table_args__ = (
        CheckConstraint("purchase_count >= 0", name="purchase_count_nonnegative"),
        CheckConstraint("replacement_count >= 0", name="replacement_count_nonnegative"),
        CheckConstraint("pending_volume >= 0", name="pending_volume_nonnegative"),
        UniqueConstraint("tag_uid"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    card_no: Mapped[str] = mapped_column(String(32), unique=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meter.id"), index=True)
    #: hex UID of the NFC tag
    tag_uid: Mapped[str | None] = mapped_column(String(32), default=None)
    tag_type: Mapped[str] = mapped_column(String(16), default=TagType.ntag215.value)
    #: 购气次数 N written on the card (the meter applies N = its count + 1)
    purchase_count: Mapped[int] = mapped_column(default=0)
    #: 补卡次数
    replacement_count: Mapped[int] = mapped_column(default=0)
    #: gas on the card the meter has not taken yet, 0.01 m³, as last confirmed
    pending_volume: Mapped[int] = mapped_column(default=0)
    state: Mapped[str] = mapped_column(String(16), default=CardState.active.value)
    #: the last image read back from the card
    last_image: Mapped[bytes | None] = mapped_column(LargeBinary, default=None)
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    meter: Mapped[Meter] = relationship(back_populates="cards")

    def transition_to(self, new: CardState) -> None:
        """Change the card's state through :data:`CARD_TRANSITIONS`."""
        check_transition(CARD_TRANSITIONS, CardState(self.state), new)
        self.state = new.value


class MeterReport(Base):
    """A meter's report as carried back on a card: readings without a visit."""

    __tablename__ = "meter_report"
    __table_args__ = (UniqueConstraint("meter_id", "report_seq"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meter.id"), index=True)
    card_id: Mapped[int | None] = mapped_column(ForeignKey("card.id"), default=None)
    #: the meter's own sequence number for its reports
    report_seq: Mapped[int] = mapped_column()
    applied_count: Mapped[int] = mapped_column()
    remaining: Mapped[int] = mapped_column()
    total_used: Mapped[int] = mapped_column()
    total_purchased: Mapped[int] = mapped_column()
    valve_open: Mapped[bool] = mapped_column()
    #: comma-separated alarms: "leak", "low_battery", "tamper"
    alarms: Mapped[str] = mapped_column(String(100), default="")
    reported_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
