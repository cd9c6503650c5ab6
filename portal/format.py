"""Display helpers for the residents' pages: money, gas volume, prices, notices, tariffs.

Money is integer fen, volume integer 0.01 m³, prices exact Decimal yuan/m³: each is
formatted here, once, with integer and Decimal arithmetic only (never float).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Literal

from babel.dates import format_skeleton
from flask_babel import get_locale, gettext

from models.clock import LOCAL_TZ
from models.tariffs import DiscountEligibility, DiscountKind, DiscountPolicy, TariffTier

#: 0.01 m³ units per m³, fen per yuan
HUNDRED = 100


def yuan(fen: int) -> str:
    """Money for display: 26100 → "¥261.00", -50 → "-¥0.50"."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), HUNDRED)
    return f"{sign}¥{whole:,}.{cents:02d}"


def volume_number(units: int) -> str:
    """A volume in m³ without its unit: 35000 → "350", 12345 → "123.45", 12340 → "123.40"."""
    sign = "-" if units < 0 else ""
    whole, hundredths = divmod(abs(units), HUNDRED)
    return f"{sign}{whole}" if hundredths == 0 else f"{sign}{whole}.{hundredths:02d}"


def volume(units: int) -> str:
    """A volume for display: 35000 → "350 m³", 12345 → "123.45 m³"."""
    return f"{volume_number(units)} m³"


def price(value: Decimal) -> str:
    """A price in yuan/m³ without its unit, at least two decimals: 2.6100 → "2.61"."""
    exponent = value.normalize().as_tuple().exponent
    places = max(2, -exponent) if isinstance(exponent, int) else 2
    return f"{value:.{places}f}"


def plain_decimal(value: Decimal) -> str:
    """A decimal without trailing zeros: 5.00 → "5", 2.50 → "2.5"."""
    return f"{value.normalize():f}"


@dataclass
class NoticeBlock:
    """A paragraph (its lines) or a list (its items) of a notice body."""

    kind: Literal["p", "ul"]
    lines: list[str] = field(default_factory=list)


def notice_blocks(body: str) -> list[NoticeBlock]:
    """Split a plain-text notice into paragraphs and lists ("- " items; blank lines separate).

    The text stays text: templates escape it, so staff cannot inject HTML.
    """
    blocks: list[NoticeBlock] = []
    current: NoticeBlock | None = None
    for raw_line in body.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        line = raw_line.strip()
        if not line:
            current = None
            continue
        kind: Literal["p", "ul"] = "ul" if line.startswith("- ") else "p"
        text = line[2:].strip() if kind == "ul" else line
        if current is None or current.kind != kind:
            current = NoticeBlock(kind)
            blocks.append(current)
        current.lines.append(text)
    return blocks


@dataclass(frozen=True)
class TierRange:
    """A tier as a volume range of the cycle: from ``lower`` to ``upper`` (None: no end)."""

    lower: int
    upper: int | None
    price: Decimal


def tier_ranges(tiers: Iterable[TariffTier]) -> list[TierRange]:
    """A tariff's tiers in order, each with the cycle volume where it starts and ends."""
    ranges = []
    lower = 0
    for tier in sorted(tiers, key=lambda t: t.position):
        ranges.append(TierRange(lower=lower, upper=tier.upper_bound, price=tier.price))
        if tier.upper_bound is not None:
            lower = tier.upper_bound
    return ranges


def cycle_start(month: int) -> str:
    """When the yearly tier cycle starts, in the reader's language ("每年3月1日起算")."""
    day = format_skeleton("MMMMd", dt.date(2000, month, 1), locale=get_locale())
    return str(gettext("每年%(day)s起算", day=day))


def discount_description(policy: DiscountPolicy) -> str:
    """A discount policy in words: who gets it and what they get."""
    if policy.eligibility == DiscountEligibility.subsidised:
        who = gettext("低保户")
    elif policy.eligibility == DiscountEligibility.large_household:
        who = gettext("%(size)s人及以上家庭", size=policy.min_household_size or "?")
    else:
        who = gettext("所有用户")
    if policy.kind == DiscountKind.percentage and policy.percent_off is not None:
        what = gettext("每次购气优惠 %(percent)s%%", percent=plain_decimal(policy.percent_off))
    elif policy.kind == DiscountKind.free_allowance and policy.volume is not None:
        what = gettext("每个周期前 %(volume)s 免费", volume=volume(policy.volume))
    elif policy.kind == DiscountKind.tier_extension and policy.volume is not None:
        what = gettext("各档阶梯上限提高 %(volume)s", volume=volume(policy.volume))
    else:
        what = gettext("其他优惠，详询客服热线")
    return str(gettext("%(who)s：%(what)s", who=who, what=what))


def meter_kind_label(kind: str) -> str:
    """A meter kind (:class:`models.states.MeterKind`) in the reader's language."""
    labels = {
        "ic_card": gettext("IC卡燃气表"),
        "iot": gettext("物联网燃气表"),
        "mechanical": gettext("机械燃气表"),
    }
    return str(labels.get(kind, kind))


def meter_status_label(status: str) -> str:
    """A meter status (:class:`models.states.MeterStatus`) in the reader's language."""
    labels = {
        "active": gettext("正常"),
        "suspended": gettext("已停用"),
        "removed": gettext("已拆除"),
    }
    return str(labels.get(status, status))


def tel_href(number: str) -> str:
    """A ``tel:`` link for a hotline as written: "400-000-0000（24小时）" → "tel:4000000000"."""
    match = re.match(r"[0-9+\- ]*", unicodedata.normalize("NFKC", number).strip())
    dialled = re.sub(r"[^0-9+]", "", match.group(0) if match else "")
    return f"tel:{dialled}"


def local_time(moment: dt.datetime | None) -> str:
    """A stored UTC moment as the local (Asia/Shanghai) time: "2026-12-04 16:30"."""
    if moment is None:
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M")


def channel_label(channel: str) -> str:
    """A payment channel in the reader's language."""
    labels = {
        "alipay": gettext("支付宝"),
        "wechat": gettext("微信支付"),
        "wechat_v2": gettext("微信支付"),
    }
    return str(labels.get(channel, channel))


def order_state_label(state: str) -> str:
    """An order state (:class:`models.states.OrderState`) in the reader's language."""
    labels = {
        "created": gettext("待付款"),
        "paying": gettext("待付款"),
        "paid": gettext("已付款"),
        "refunding": gettext("退款中"),
        "refunded": gettext("已退款"),
        "closed": gettext("已关闭"),
    }
    return str(labels.get(state, state))


def credit_state_label(state: str | None) -> str:
    """Where paid gas is (:class:`models.states.CreditState`), in the reader's language."""
    labels = {
        "awaiting_load": gettext("待圈存"),
        "loaded": gettext("已写卡，待插表"),
        "applied": gettext("已入表"),
        "refunded": gettext("已退款"),
    }
    return str(labels.get(state or "", ""))


def alarm_label(alarm: str) -> str:
    """A meter alarm as reported on the card, in the reader's language."""
    labels = {
        "leak": gettext("燃气泄漏"),
        "low_battery": gettext("电池电量低"),
        "tamper": gettext("表具被拆动"),
    }
    return str(labels.get(alarm, alarm))
