"""Masking, 户号 normalisation and the read functions behind the residents' pages."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import Account, Meter, ServiceNotice
from models.lookup import (
    find_account,
    list_branches,
    mask_address,
    mask_name,
    mask_phone,
    normalise_account_no,
    service_notices,
)
from tests.factories import gen_account, gen_branch


@pytest.mark.parametrize(
    ("name", "masked"),
    [
        ("张三", "张*"),
        ("王小明", "王*明"),
        ("欧阳娜娜", "欧**娜"),
        ("张", "*"),
        (" 李 四 ", "李*"),
        ("示范餐饮有限公司", "示范**有限公司"),
        ("华为公司", "华*公司"),
        ("示范燃气股份有限公司", "示范**股份有限公司"),
        ("John Smith", "J*** S****"),
        ("", ""),
    ],
)
def test_mask_name(name: str, masked: str) -> None:
    assert mask_name(name) == masked


@pytest.mark.parametrize(
    ("phone", "masked"),
    [
        ("13812341234", "138****1234"),
        ("+86 138 1234 1234", "138****1234"),
        ("010-12345678", "010****5678"),
        ("12345", "***45"),
    ],
)
def test_mask_phone(phone: str, masked: str) -> None:
    assert mask_phone(phone) == masked


@pytest.mark.parametrize(
    ("address", "masked"),
    [
        ("示范市和平区幸福路1号1单元101", "示范市和平区幸福路****"),
        ("示范市和平区商业街10号", "示范市和平区商业街****"),
        ("示范市和平区幸福路１号", "示范市和平区幸福路****"),  # full-width digits
        ("示范市和平区幸福路三号楼二单元", "示范市和平区幸福路****"),
        ("示范市和平区某某小区甲栋", "示范市和平区某某小区****"),
        ("某某某某某某", "某某****"),
        ("示范市和平区幸福路", "示范市和平区幸福路"),  # no house number: nothing to hide
    ],
)
def test_mask_address(address: str, masked: str) -> None:
    assert mask_address(address) == masked


@pytest.mark.parametrize(
    ("raw", "account_no"),
    [
        ("10000001", "10000001"),
        ("  1000 0001 ", "10000001"),
        ("１０００００01", "10000001"),
        ("1000-0001", "10000001"),
        ("123456", "123456"),
        ("1" * 20, "1" * 20),
        ("12345", None),
        ("1" * 21, None),
        ("", None),
        ("1000000a", None),
        ("1000000١", None),  # an Arabic-Indic digit is not a 户号 digit
        ("' OR 1=1 --", None),
    ],
)
def test_normalise_account_no(raw: str, account_no: str | None) -> None:
    assert normalise_account_no(raw) == account_no


def test_find_account_is_masked_and_lists_meters(db: Session) -> None:
    account = gen_account(
        db, holder_name="王小明", address="示范市和平区幸福路2号2单元201", meters=2
    )
    summary = find_account(db, account.account_no)
    assert summary is not None
    assert summary.holder_masked == "王*明"
    assert summary.address_masked == "示范市和平区幸福路****"
    assert summary.category_code == "residential"
    assert [m.meter_no for m in summary.meters] == [m.meter_no for m in account.meters]
    assert {m.kind for m in summary.meters} == {"ic_card"}
    # the summary carries no unmasked personal data at all
    flat = repr(summary)
    assert "王小明" not in flat
    assert account.phone not in flat
    assert "2单元201" not in flat


def test_find_account_leaves_out_removed_meters(db: Session) -> None:
    account = gen_account(db, meters=2)
    account.meters[0].status = "removed"
    db.flush()
    summary = find_account(db, account.account_no)
    assert summary is not None
    assert [m.meter_no for m in summary.meters] == [account.meters[1].meter_no]


def test_find_account_unknown_creates_nothing(db: Session) -> None:
    gen_account(db)
    before = (db.scalar(select(func.count(Account.id))), db.scalar(select(func.count(Meter.id))))
    assert find_account(db, "99999999999") is None
    assert not db.new and not db.dirty
    after = (db.scalar(select(func.count(Account.id))), db.scalar(select(func.count(Meter.id))))
    assert after == before


def _notice(db: Session, branch_id: int, topic: str, lang: str, position: int = 0) -> None:
    db.add(
        ServiceNotice(
            branch_id=branch_id,
            topic=topic,
            lang=lang,
            title=f"{topic}-{lang}",
            body="text",
            position=position,
        )
    )


def test_service_notices_prefer_language_and_fall_back_to_chinese(db: Session) -> None:
    branch = gen_branch(db)
    other = gen_branch(db)
    _notice(db, branch.id, "process", "zh", 0)
    _notice(db, branch.id, "process", "en", 0)
    _notice(db, branch.id, "commitments", "zh", 1)
    _notice(db, other.id, "hotline_hours", "en", 2)
    db.flush()
    en = service_notices(db, branch_id=branch.id, lang="en")
    assert [n.title for n in en] == ["process-en", "commitments-zh"]
    zh = service_notices(db, branch_id=branch.id, lang="zh")
    assert [n.title for n in zh] == ["process-zh", "commitments-zh"]


def test_list_branches_first_created_first(db: Session) -> None:
    first = gen_branch(db)
    second = gen_branch(db)
    codes = [b.code for b in list_branches(db)]
    assert codes.index(first.code) < codes.index(second.code)
