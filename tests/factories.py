"""Small factories: sensible defaults, ``**overrides`` for what a test cares about."""

from __future__ import annotations

import datetime as dt
import itertools
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import (
    Account,
    Branch,
    Card,
    Company,
    CustomerCategory,
    Meter,
    Order,
    Tariff,
    TariffTier,
)
from models.base import utcnow

_seq = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}{next(_seq):06d}"


def gen_branch(session: Session, **overrides: Any) -> Branch:
    company = session.scalar(select(Company).where(Company.code == "TEST"))
    if company is None:
        company = Company(code="TEST", name="测试燃气")
        session.add(company)
    fields: dict[str, Any] = {
        "company": company,
        "code": unique("BR"),
        "name": "测试分公司",
        "hotline": "400-000-0001",
    }
    fields.update(overrides)
    branch = Branch(**fields)
    session.add(branch)
    session.flush()
    return branch


def gen_category(session: Session, code: str = "residential") -> CustomerCategory:
    category = session.scalar(select(CustomerCategory).where(CustomerCategory.code == code))
    if category is None:
        category = CustomerCategory(code=code, name_zh=code, name_en=code)
        session.add(category)
        session.flush()
    return category


def gen_tariff(session: Session, branch: Branch, **overrides: Any) -> Tariff:
    """A Beijing-shaped residential tariff unless told otherwise."""
    tiers = overrides.pop("tiers", None) or [
        TariffTier(position=1, upper_bound=35000, price=Decimal("2.61")),
        TariffTier(position=2, upper_bound=50000, price=Decimal("2.83")),
        TariffTier(position=3, upper_bound=None, price=Decimal("4.23")),
    ]
    fields: dict[str, Any] = {
        "code": unique("T"),
        "name": "测试气价",
        "branch": branch,
        "category": overrides.pop("category", None) or gen_category(session),
        "effective_from": dt.date(2020, 1, 1),
        "cycle_start_month": 1,
        "min_purchase": 100,
        "max_purchase": 30000,
        "tiers": tiers,
    }
    fields.update(overrides)
    tariff = Tariff(**fields)
    session.add(tariff)
    session.flush()
    return tariff


def gen_account(session: Session, **overrides: Any) -> Account:
    """An account with one IC-card meter and an active card."""
    branch = overrides.pop("branch", None) or gen_branch(session)
    meters = overrides.pop("meters", 1)
    fields: dict[str, Any] = {
        "account_no": unique("9"),
        "holder_name": "张三",
        "phone": "13900001234",
        "address": "测试路1号",
        "branch": branch,
        "category": overrides.pop("category", None) or gen_category(session),
        "household_size": 3,
    }
    fields.update(overrides)
    account = Account(**fields)
    session.add(account)
    for _ in range(meters):
        meter = Meter(meter_no=unique("M"), account=account, capacity=99999)
        session.add(meter)
        session.add(Card(card_no=unique("C"), meter=meter, tag_uid=unique("04")))
    session.flush()
    return account


def gen_order(session: Session, meter: Meter, tariff: Tariff, **overrides: Any) -> Order:
    fields: dict[str, Any] = {
        "order_no": unique("R"),
        "account_id": meter.account_id,
        "meter_id": meter.id,
        "tariff_id": tariff.id,
        "channel": "alipay",
        "amount": 26100,
        "volume": 10000,
        "quote": {"parts": []},
        "created_at": utcnow(),
    }
    fields.update(overrides)
    order = Order(**fields)
    session.add(order)
    session.flush()
    return order
