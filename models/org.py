"""The utility itself: company, branches (总-分公司), customer categories, public notices."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from models.base import Base, BigIntPK, UTCDateTime, utcnow


class Company(Base):
    __tablename__ = "company"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    #: short code used in imports ("BJGAS")
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))

    branches: Mapped[list[Branch]] = relationship(back_populates="company")


class Branch(Base):
    """A branch (分公司) with its own tariffs and service information."""

    __tablename__ = "branch"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    company_id: Mapped[int] = mapped_column(ForeignKey("company.id"))
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    #: service hotline shown to residents (《城镇燃气管理条例》 art. 17)
    hotline: Mapped[str] = mapped_column(String(40), default="")

    company: Mapped[Company] = relationship(back_populates="branches")


class CustomerCategory(Base):
    """A customer category (居民, 非居民, ...); each branch prices each category."""

    __tablename__ = "customer_category"

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    #: stable code used in imports ("residential", "non_residential")
    code: Mapped[str] = mapped_column(String(32), unique=True)
    name_zh: Mapped[str] = mapped_column(String(100))
    name_en: Mapped[str] = mapped_column(String(100))


class ServiceNotice(Base):
    """Public information a branch must publish: business process, commitments, ...

    One row per (branch, topic, language); staff edit them, the public page shows them.
    """

    __tablename__ = "service_notice"
    __table_args__ = (UniqueConstraint("branch_id", "topic", "lang"),)

    id: Mapped[int] = mapped_column(BigIntPK, primary_key=True)
    branch_id: Mapped[int] = mapped_column(ForeignKey("branch.id"))
    #: "process", "commitments", "hotline_hours", ...
    topic: Mapped[str] = mapped_column(String(32))
    #: "zh" or "en"
    lang: Mapped[str] = mapped_column(String(8))
    title: Mapped[str] = mapped_column(String(200))
    #: plain text; blank lines separate paragraphs, lines starting "- " are list items
    body: Mapped[str] = mapped_column(Text)
    position: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    branch: Mapped[Branch] = relationship()
