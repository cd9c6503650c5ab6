"""Orders, the credits they buy, card writes, provider events, conflicts and refunds."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.accounts import Account, Card, Meter
from models.base import Base, BigIntPK, UTCDateTime, utcnow
from models.states import (
    CARD_WRITE_TRANSITIONS,
    CONFLICT_TRANSITIONS,
    CREDIT_TRANSITIONS,
    ORDER_TRANSITIONS,
    REFUND_TRANSITIONS,
    CardWriteState,
    ConflictState,
    CreditState,
    OrderState,
    RefundState,
    check_transition,
)


class Order(Base):
    """A resident's purchase: a quoted volume at a quoted amount, paid through a channel."""

    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("amount > 0", name="amount_positive"),
        CheckConstraint("volume > 0", name="volume_positive"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    #: our order number, sent to the provider as out_trade_no
    order_no: Mapped[str] = mapped_column(String(32), unique=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("account.id"), index=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meter.id"), index=True)
    tariff_id: Mapped[int] = mapped_column(ForeignKey("tariff.id"))
    #: "alipay", "wechat", "wechat_v2"
    channel: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default=OrderState.created.value, index=True)
    #: what the resident pays, fen
    amount: Mapped[int] = mapped_column()
    #: gas bought, 0.01 m³
    volume: Mapped[int] = mapped_column()
    #: the quote as shown: tier parts with volume, price and amount
    quote: Mapped[dict[str, Any]] = mapped_column(JSON)
    #: the client's Idempotency-Key for POST /api/v1/orders
    idempotency_key: Mapped[str | None] = mapped_column(String(80), unique=True, default=None)
    #: the provider's transaction id once known
    provider_trade_no: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    paid_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    account: Mapped[Account] = relationship()
    meter: Mapped[Meter] = relationship()
    credit: Mapped[Credit | None] = relationship(back_populates="order", uselist=False)

    def transition_to(self, new: OrderState) -> None:
        """Change the order's state through :data:`ORDER_TRANSITIONS`."""
        check_transition(ORDER_TRANSITIONS, OrderState(self.state), new)
        self.state = new.value


card_write_credit = Table(
    "card_write_credit",
    Base.metadata,
    Column("card_write_id", ForeignKey("card_write.id"), primary_key=True),
    Column("credit_id", ForeignKey("credit.id"), primary_key=True),
)


class Credit(Base):
    """Gas a paid order entitles a meter to, on its way to the card and the meter."""

    __tablename__ = "credit"
    __table_args__ = (
        CheckConstraint("volume > 0", name="volume_positive"),
        CheckConstraint("value >= 0", name="value_nonnegative"),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), unique=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meter.id"), index=True)
    #: 0.01 m³
    volume: Mapped[int] = mapped_column()
    #: what was paid for it, fen
    value: Mapped[int] = mapped_column()
    state: Mapped[str] = mapped_column(String(16), default=CreditState.awaiting_load.value)
    #: the purchase count N under which the credit went onto the card
    purchase_count: Mapped[int | None] = mapped_column(default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    loaded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)
    applied_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    order: Mapped[Order | None] = relationship(back_populates="credit")
    meter: Mapped[Meter] = relationship()

    def transition_to(self, new: CreditState) -> None:
        """Change the credit's state through :data:`CREDIT_TRANSITIONS`."""
        check_transition(CREDIT_TRANSITIONS, CreditState(self.state), new)
        self.state = new.value


Index(
    "ix_credit_meter_awaiting",
    Credit.meter_id,
    Credit.state,
)


class CardWrite(Base):
    """A target card image handed to a kiosk; credits count as loaded once confirmed."""

    __tablename__ = "card_write"
    __table_args__ = (
        # One outstanding write per card: the database, not process memory, says so.
        Index(
            "uq_card_write_one_issued",
            "card_id",
            unique=True,
            postgresql_where=text("state = 'issued'"),
            sqlite_where=text("state = 'issued'"),
        ),
    )

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    #: the id the kiosk confirms with
    write_id: Mapped[str] = mapped_column(String(40), unique=True)
    card_id: Mapped[int] = mapped_column(ForeignKey("card.id"), index=True)
    kiosk_id: Mapped[int | None] = mapped_column(ForeignKey("kiosk.id"), default=None)
    state: Mapped[str] = mapped_column(String(16), default=CardWriteState.issued.value)
    #: purchase count N and pending volume the target image carries
    purchase_count: Mapped[int] = mapped_column()
    pending_volume: Mapped[int] = mapped_column()
    target_image: Mapped[bytes] = mapped_column(LargeBinary)
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    card: Mapped[Card] = relationship()
    credits: Mapped[list[Credit]] = relationship(secondary=card_write_credit)

    def transition_to(self, new: CardWriteState) -> None:
        """Change the write's state through :data:`CARD_WRITE_TRANSITIONS`."""
        check_transition(CARD_WRITE_TRANSITIONS, CardWriteState(self.state), new)
        self.state = new.value


class PaymentEvent(Base):
    """A raw message from a payment provider, kept as received, verified or not."""

    __tablename__ = "payment_event"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    #: "alipay", "wechat", "wechat_v2"
    provider: Mapped[str] = mapped_column(String(16))
    #: "notify", "query", "refund_notify", ...
    kind: Mapped[str] = mapped_column(String(24))
    order_no: Mapped[str | None] = mapped_column(String(32), index=True, default=None)
    raw_body: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    verified: Mapped[bool] = mapped_column(default=False)
    #: what we did with it: "paid", "duplicate", "conflict", "closed", "ignored", "rejected"
    outcome: Mapped[str] = mapped_column(String(24), default="")
    #: why, for people: the reason a notify was rejected, ...
    detail: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class PaymentConflict(Base):
    """Money that arrived but does not fit an order: staff decide, nothing is dropped."""

    __tablename__ = "payment_conflict"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    provider: Mapped[str] = mapped_column(String(16))
    order_no: Mapped[str] = mapped_column(String(32), index=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id"), default=None)
    event_id: Mapped[int | None] = mapped_column(ForeignKey("payment_event.id"), default=None)
    provider_trade_no: Mapped[str | None] = mapped_column(String(64), default=None)
    #: "amount_mismatch", "order_closed", "unknown_order", ...
    reason: Mapped[str] = mapped_column(String(32))
    #: the amount the provider reported, fen
    amount: Mapped[int] = mapped_column()
    state: Mapped[str] = mapped_column(String(16), default=ConflictState.open.value)
    resolution: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    resolved_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    def transition_to(self, new: ConflictState) -> None:
        """Change the conflict's state through :data:`CONFLICT_TRANSITIONS`."""
        check_transition(CONFLICT_TRANSITIONS, ConflictState(self.state), new)
        self.state = new.value


class Refund(Base):
    """Money returned for gas that provably never reached a card."""

    __tablename__ = "refund"
    __table_args__ = (CheckConstraint("amount > 0", name="amount_positive"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    refund_no: Mapped[str] = mapped_column(String(32), unique=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id"), index=True)
    credit_id: Mapped[int | None] = mapped_column(ForeignKey("credit.id"), default=None)
    #: fen
    amount: Mapped[int] = mapped_column()
    state: Mapped[str] = mapped_column(String(16), default=RefundState.requested.value)
    reason: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[int | None] = mapped_column(ForeignKey("operator.id"), default=None)
    approved_by: Mapped[int | None] = mapped_column(ForeignKey("operator.id"), default=None)
    provider_refund_no: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    order: Mapped[Order] = relationship()

    def transition_to(self, new: RefundState) -> None:
        """Change the refund's state through :data:`REFUND_TRANSITIONS`."""
        check_transition(REFUND_TRANSITIONS, RefundState(self.state), new)
        self.state = new.value
