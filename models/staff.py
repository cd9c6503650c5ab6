"""Kiosks, operators and roles, the append-only audit log, and safety cases."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, BigIntPK, UTCDateTime, utcnow
from models.org import Branch
from models.states import CASE_TRANSITIONS, CaseState, check_transition


class Kiosk(Base):
    """An NFC kiosk (or staff counter); an OAuth2 client of the kiosk API."""

    __tablename__ = "kiosk"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    #: where residents find it, shown on the result page
    location: Mapped[str] = mapped_column(String(300), default="")
    opening_hours: Mapped[str] = mapped_column(String(100), default="")
    branch_id: Mapped[int | None] = mapped_column(ForeignKey("branch.id"), default=None)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    #: hash of the client secret; the secret itself is shown once and never stored
    client_secret_hash: Mapped[str] = mapped_column(String(200), default="")
    enabled: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)

    branch: Mapped[Branch | None] = relationship()


class KioskToken(Base):
    """An access token issued to a kiosk (OAuth2 client credentials); only its hash is kept."""

    __tablename__ = "kiosk_token"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    kiosk_id: Mapped[int] = mapped_column(ForeignKey("kiosk.id"), index=True)
    #: SHA-256 hex of the bearer token
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(200), default="")
    issued_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    revoked: Mapped[bool] = mapped_column(default=False)

    kiosk: Mapped[Kiosk] = relationship()


class Role(Base):
    __tablename__ = "role"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: permission names, e.g. ["cases.view", "refund.request"]
    permissions: Mapped[list[str]] = mapped_column(JSON, default=list)


class Operator(Base):
    """A member of staff."""

    __tablename__ = "operator"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(100))
    #: werkzeug password hash; empty for single-sign-on only operators
    password_hash: Mapped[str] = mapped_column(String(200), default="")
    #: subject at the OIDC provider, for single sign-on
    oidc_subject: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    role_id: Mapped[int] = mapped_column(ForeignKey("role.id"))
    branch_id: Mapped[int | None] = mapped_column(ForeignKey("branch.id"), default=None)
    active: Mapped[bool] = mapped_column(default=True)

    role: Mapped[Role] = relationship()


class AuditLog(Base):
    """Who did what, when: append-only (database triggers refuse UPDATE and DELETE)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    #: "operator:12", "kiosk:3", "system", "cli"
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class SafetyCase(Base):
    """A leak, tamper or low-battery alarm (or other incident) for staff to follow up."""

    __tablename__ = "safety_case"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    meter_id: Mapped[int] = mapped_column(ForeignKey("meter.id"), index=True)
    report_id: Mapped[int | None] = mapped_column(ForeignKey("meter_report.id"), default=None)
    #: "leak", "tamper", "low_battery"
    kind: Mapped[str] = mapped_column(String(24))
    state: Mapped[str] = mapped_column(String(16), default=CaseState.open.value)
    note: Mapped[str] = mapped_column(Text, default="")
    opened_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, default=None)

    def transition_to(self, new: CaseState) -> None:
        """Change the case's state through :data:`CASE_TRANSITIONS`."""
        check_transition(CASE_TRANSITIONS, CaseState(self.state), new)
        self.state = new.value


def audit(actor: str, action: str, target: str = "", **detail: Any) -> AuditLog:
    """A new audit record; the caller adds it to the session of the change it records."""
    return AuditLog(actor=actor, action=action, target=target, detail=detail)
