"""Read-only look-ups for the residents' pages: an account by 户号 (masked), branches, notices.

Residents have no passwords, so what a look-up by 户号 returns is only what anyone who
knows the number may see: the holder's name and address masked, the category and the
meters. Details and history need the second factor checked here
(:func:`second_factor_matches`); they are read by :mod:`models.history`.
"""

from __future__ import annotations

import hmac
import re
import unicodedata
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from models.accounts import Account
from models.org import Branch, ServiceNotice
from models.states import MeterStatus

#: 户号 as residents may type it, after normalisation: 6–20 ASCII digits
ACCOUNT_NO_RE = re.compile(r"[0-9]{6,20}")

#: What replaces the house-number part of an address: a fixed width, so the length of
#: the hidden part is not revealed.
ADDRESS_MASK = "****"

#: Endings that mark an organisation's name; they stay visible when the name is masked.
ORGANISATION_SUFFIXES = (
    "股份有限公司",
    "有限责任公司",
    "有限公司",
    "分公司",
    "公司",
    "集团",
    "合作社",
    "事务所",
    "中心",
    "餐厅",
    "饭店",
    "酒店",
    "学校",
    "医院",
    "商店",
    "超市",
    "工厂",
    "厂",
    "店",
)

#: Markers that end a street (or village) part of an address; everything after the
#: last of them that comes before a house-number marker is masked.
_STREET_MARKERS = ("大道", "胡同", "路", "街", "道", "巷", "弄", "里", "村")
_HOUSE_MARKERS = ("号", "栋", "幢", "座", "楼", "单元", "室", "层")
_ADMIN_MARKERS = ("省", "市", "区", "县", "镇", "乡")


@dataclass(frozen=True)
class MeterSummary:
    """A meter as the public look-up shows it."""

    meter_no: str
    #: a :class:`models.states.MeterKind` value
    kind: str
    #: a :class:`models.states.MeterStatus` value
    status: str


@dataclass(frozen=True)
class AccountSummary:
    """An account as anyone who knows its 户号 may see it: masked, no phone, no history."""

    account_no: str
    holder_masked: str
    address_masked: str
    category_code: str
    category_name_zh: str
    category_name_en: str
    branch_id: int
    meters: tuple[MeterSummary, ...]


def normalise_account_no(raw: str) -> str | None:
    """The 户号 in ``raw`` (full-width digits and spaces allowed), or None if it is not one."""
    text = unicodedata.normalize("NFKC", raw)
    text = "".join(text.split()).replace("-", "")
    return text if ACCOUNT_NO_RE.fullmatch(text) else None


def find_account(session: Session, account_no: str) -> AccountSummary | None:
    """The masked public view of the account with this 户号, or None if there is none."""
    account = session.scalar(
        select(Account)
        .where(Account.account_no == account_no)
        .options(selectinload(Account.meters), selectinload(Account.category))
    )
    if account is None:
        return None
    return AccountSummary(
        account_no=account.account_no,
        holder_masked=mask_name(account.holder_name),
        address_masked=mask_address(account.address),
        category_code=account.category.code,
        category_name_zh=account.category.name_zh,
        category_name_en=account.category.name_en,
        branch_id=account.branch_id,
        meters=tuple(
            MeterSummary(meter_no=m.meter_no, kind=m.kind, status=m.status)
            for m in account.meters
            if m.status != MeterStatus.removed
        ),
    )


def mask_name(name: str) -> str:
    """A holder's name with its middle hidden: 张*三, 张*, 示范**有限公司, J*** S****."""
    name = name.strip()
    if not name:
        return ""
    for suffix in ORGANISATION_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            core = name[: -len(suffix)]
            keep = 2 if len(core) >= 4 else 1 if len(core) >= 2 else 0
            return core[:keep] + "*" * (len(core) - keep) + suffix
    if name.isascii():
        return " ".join(word[0] + "*" * (len(word) - 1) for word in name.split())
    name = "".join(name.split())
    if len(name) == 1:
        return "*"
    if len(name) == 2:
        return name[0] + "*"
    return name[0] + "*" * (len(name) - 2) + name[-1]


def mask_phone(phone: str) -> str:
    """A phone number with all but its first three and last four digits hidden: 138****1234."""
    digits = "".join(ch for ch in unicodedata.normalize("NFKC", phone) if ch.isdigit())
    if digits.startswith("86") and len(digits) == 13:
        digits = digits[2:]
    if len(digits) >= 8:
        return digits[:3] + "*" * (len(digits) - 7) + digits[-4:]
    if len(digits) > 2:
        return "*" * (len(digits) - 2) + digits[-2:]
    return "*" * len(digits)


def mask_address(address: str) -> str:
    """An address cut after its district and street, the house-number part hidden.

    示范市和平区幸福路1号1单元101 → 示范市和平区幸福路****. When in doubt more is hidden.
    """
    text = unicodedata.normalize("NFKC", address).strip()
    if not text:
        return ""
    cut = next((i for i, ch in enumerate(text) if ch.isdigit()), None)
    if cut is None:
        house = min((i for m in _HOUSE_MARKERS if (i := text.find(m)) > 0), default=len(text))
        head = text[:house]
        cut = _end_of_last(head, _STREET_MARKERS) or _end_of_last(head, _ADMIN_MARKERS)
    if cut is None:
        cut = len(text) // 3
    if cut >= len(text):
        return text
    return text[:cut] + ADDRESS_MASK


def _end_of_last(text: str, markers: tuple[str, ...]) -> int | None:
    """The position just after the last of ``markers`` in ``text``, if any occurs."""
    ends = [i + len(m) for m in markers if (i := text.rfind(m)) >= 0]
    return max(ends) if ends else None


def list_branches(session: Session) -> list[Branch]:
    """Every branch, first-created first (the first is the default for public pages)."""
    return list(session.scalars(select(Branch).order_by(Branch.id)))


def first_branch(session: Session) -> Branch | None:
    """The default branch of the public pages: the first created, if there is any."""
    return session.scalar(select(Branch).order_by(Branch.id).limit(1))


def service_notices(session: Session, *, branch_id: int, lang: str) -> list[ServiceNotice]:
    """A branch's notices in ``lang``, the Chinese one standing in where ``lang`` has none."""
    rows = session.scalars(
        select(ServiceNotice).where(
            ServiceNotice.branch_id == branch_id, ServiceNotice.lang.in_((lang, "zh"))
        )
    )
    by_topic: dict[str, ServiceNotice] = {}
    for row in rows:
        if row.topic not in by_topic or row.lang == lang:
            by_topic[row.topic] = row
    return sorted(by_topic.values(), key=lambda n: (n.position, n.topic))


#: the second factor as residents type it: four digits
LAST_FOUR_RE = re.compile(r"[0-9]{4}")


def normalise_last_four(raw: str) -> str | None:
    """The four digits typed (full-width allowed, spaces ignored), or None if they are not."""
    text = "".join(unicodedata.normalize("NFKC", raw).split())
    return text if LAST_FOUR_RE.fullmatch(text) else None


def second_factor_matches(session: Session, account_no: str, last_four: str) -> bool:
    """Whether ``last_four`` are the last four digits of the account's registered phone."""
    phone = session.scalar(select(Account.phone).where(Account.account_no == account_no))
    if phone is None:
        return False
    digits = "".join(ch for ch in unicodedata.normalize("NFKC", phone) if ch.isdigit())
    if len(digits) < 4:
        return False
    return hmac.compare_digest(digits[-4:].encode(), last_four.encode())
