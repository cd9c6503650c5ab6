"""The demo utility that ``make run`` loads: one branch, Beijing-shaped tariffs, ten accounts.

Idempotent: running it again changes nothing. The README lists the accounts and the
second factor (last four digits of the phone) for each.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.accounts import Account, Card, Meter
from models.base import utcnow
from models.clock import cycle_start, local_date
from models.org import Branch, Company, CustomerCategory, ServiceNotice
from models.staff import Kiosk
from models.tariffs import DiscountPolicy, Tariff, TariffTier

M3 = 100  #: 0.01 m³ units per m³

#: (account_no, holder, phone, address, category, household size, subsidised,
#:  opening volume per meter this cycle in m³)
DEMO_ACCOUNTS: list[tuple[str, str, str, str, str, int, bool, list[int]]] = [
    (
        "10000001",
        "张三",
        "13800001001",
        "示范市和平区幸福路1号1单元101",
        "residential",
        3,
        False,
        [300],
    ),
    (
        "10000002",
        "李四",
        "13800001002",
        "示范市和平区幸福路1号1单元102",
        "residential",
        4,
        False,
        [200, 140],
    ),
    (
        "10000003",
        "王小明",
        "13800001003",
        "示范市和平区幸福路2号2单元201",
        "residential",
        6,
        False,
        [0],
    ),
    (
        "10000004",
        "赵敏",
        "13800001004",
        "示范市和平区幸福路2号2单元202",
        "residential",
        2,
        True,
        [0],
    ),
    ("10000005", "钱进", "13800001005", "示范市和平区安康街5号501", "residential", 3, False, [0]),
    ("10000006", "孙丽", "13800001006", "示范市和平区安康街5号502", "residential", 1, False, [0]),
    ("10000007", "周杰", "13800001007", "示范市和平区安康街6号601", "residential", 2, False, [0]),
    ("10000008", "吴芳", "13800001008", "示范市和平区安康街6号602", "residential", 5, False, [0]),
    ("10000009", "郑强", "13800001009", "示范市和平区安康街7号701", "residential", 3, False, [0]),
    (
        "10000010",
        "示范餐饮有限公司",
        "13800001010",
        "示范市和平区商业街10号",
        "non_residential",
        1,
        False,
        [0],
    ),
]

NOTICES: list[tuple[str, str, str, str]] = [
    (
        "process",
        "zh",
        "购气业务流程",
        "- 输入户号查询账户，核对户名与地址。\n"
        "- 选择燃气表，按气量或金额购气，确认阶梯明细。\n"
        "- 用支付宝或微信支付。\n- 到就近的自助圈存机刷卡写卡。\n"
        "- 将燃气卡插入燃气表，表具自动加气。",
    ),
    (
        "process",
        "en",
        "How to buy gas",
        "- Enter your account number (户号) and check the holder and address.\n"
        "- Choose a meter, buy by volume or amount, and check the tier breakdown.\n"
        "- Pay with Alipay or WeChat Pay.\n- Tap your gas card at a nearby kiosk to load it.\n"
        "- Insert the card into your meter: the gas is added.",
    ),
    (
        "commitments",
        "zh",
        "服务承诺",
        "- 7×24小时网上购气，支付成功后即可到自助终端写卡。\n"
        "- 已付款未写卡的气量全额可退，3个工作日内原路退回。\n"
        "- 燃气泄漏抢修：接报后30分钟内到达现场。\n- 收费标准按价格主管部门核定的价格执行并公示。",
    ),
    (
        "commitments",
        "en",
        "Our commitments",
        "- Buy gas online at any hour; load it at a kiosk as soon as it is paid.\n"
        "- Gas paid for but not loaded onto a card is refunded in full to the original "
        "account within 3 working days.\n"
        "- Gas leaks: our emergency team is on site within 30 minutes of your call.\n"
        "- Prices are those approved by the pricing authority, published here.",
    ),
]


def load(session: Session, *, now: dt.datetime | None = None) -> str:
    """Create the demo data unless it is there already; return a one-line summary."""
    if session.scalar(select(Company).where(Company.code == "DEMO")) is not None:
        return "demo data already present"
    now = now or utcnow()
    company = Company(code="DEMO", name="示范燃气集团")
    branch = Branch(
        company=company, code="DEMO-CITY", name="示范燃气集团市区分公司", hotline="400-000-0000"
    )
    residential = CustomerCategory(code="residential", name_zh="居民", name_en="Residential")
    business = CustomerCategory(code="non_residential", name_zh="非居民", name_en="Non-residential")
    session.add_all([company, branch, residential, business])

    effective = dt.date(2026, 1, 1)
    res_tariff = Tariff(
        code="DEMO-RES-2026",
        name="居民阶梯气价",
        branch=branch,
        category=residential,
        effective_from=effective,
        cycle_start_month=1,
        min_purchase=1 * M3,
        max_purchase=300 * M3,
        tiers=[
            TariffTier(position=1, upper_bound=350 * M3, price=Decimal("2.61")),
            TariffTier(position=2, upper_bound=500 * M3, price=Decimal("2.83")),
            TariffTier(position=3, upper_bound=None, price=Decimal("4.23")),
        ],
        discounts=[
            # Households of five or more get each tier boundary moved up by 100 m³.
            DiscountPolicy(
                kind="tier_extension",
                eligibility="large_household",
                volume=100 * M3,
                min_household_size=5,
            ),
            # 低保户: the first 50 m³ of each cycle free (a demo policy, not Beijing's).
            DiscountPolicy(kind="free_allowance", eligibility="subsidised", volume=50 * M3),
        ],
    )
    biz_tariff = Tariff(
        code="DEMO-BIZ-2026",
        name="非居民气价",
        branch=branch,
        category=business,
        effective_from=effective,
        cycle_start_month=1,
        min_purchase=1 * M3,
        max_purchase=900 * M3,
        tiers=[TariffTier(position=1, upper_bound=None, price=Decimal("3.35"))],
    )
    session.add_all([res_tariff, biz_tariff])

    this_cycle = cycle_start(local_date(now), 1)
    categories = {"residential": residential, "non_residential": business}
    for account_no, holder, phone, address, category, size, subsidised, openings in DEMO_ACCOUNTS:
        account = Account(
            account_no=account_no,
            holder_name=holder,
            phone=phone,
            address=address,
            branch=branch,
            category=categories[category],
            household_size=size,
            subsidised=subsidised,
        )
        session.add(account)
        for index, opening in enumerate(openings, start=1):
            meter = Meter(
                meter_no=f"M{account_no}{index}",
                account=account,
                kind="ic_card",
                capacity=99999,
                opening_cycle_volume=opening * M3,
                opening_cycle_start=this_cycle if opening else None,
            )
            session.add(meter)
            session.add(
                Card(
                    card_no=f"C{account_no}{index}",
                    meter=meter,
                    tag_uid=f"04{account_no}{index:02d}AA",
                    tag_type="ntag215",
                )
            )

    for topic, lang, title, body in NOTICES:
        session.add(
            ServiceNotice(
                branch=branch,
                topic=topic,
                lang=lang,
                title=title,
                body=body,
                position=0 if topic == "process" else 1,
            )
        )
    session.add_all(
        [
            Kiosk(
                name="幸福路社区服务站自助机",
                location="示范市和平区幸福路1号社区服务站一层",
                opening_hours="07:00–22:00",
                branch=branch,
                client_id="demo-kiosk-1",
            ),
            Kiosk(
                name="市区分公司营业厅",
                location="示范市和平区人民路88号营业厅",
                opening_hours="08:30–17:30",
                branch=branch,
                client_id="demo-counter-1",
            ),
        ]
    )
    session.flush()
    return f"demo data loaded: {len(DEMO_ACCOUNTS)} accounts, cycle from {this_cycle}"
