"""Receipts printed to an escpos File printer: the bytes carry the right text."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from kiosk.receipt import (
    LoadReceipt,
    PurchaseReceipt,
    TierPart,
    money_text,
    open_printer,
    print_load,
    print_purchase,
    volume_text,
)

AT = dt.datetime(2026, 12, 4, 8, 30, tzinfo=dt.UTC)
CUT = b"\x1dV"  # GS V: paper cut


def test_load_receipt_bytes(tmp_path: Path) -> None:
    path = tmp_path / "lp0"
    device = open_printer(f"file:{path}")
    print_load(
        device,
        LoadReceipt(
            kiosk="幸福路 Kiosk 1",
            at=AT,
            account_no="10000001",
            meter_no="M100000011",
            card_no="C100000011",
            loaded=12345,
            purchase_count=3,
            pending_volume=12345,
        ),
    )
    device.close()
    out = path.read_bytes()
    assert b"RANQI GAS" in out
    assert b"2026-12-04 16:30:00" in out  # shown in Asia/Shanghai
    assert b"10000001" in out and b"M100000011" in out and b"C100000011" in out
    assert b"Loaded now" in out and b"123.45 m3" in out
    assert b"Purchase no. (N)" in out and b" 3\n" in out
    assert b"?? Kiosk 1" in out  # Chinese is replaced, never sent as mojibake
    assert out.rstrip().endswith(CUT) or CUT in out


def test_purchase_receipt_bytes(tmp_path: Path) -> None:
    path = tmp_path / "lp0"
    device = open_printer(f"file:{path}")
    print_purchase(
        device,
        PurchaseReceipt(
            kiosk="Kiosk 1",
            at=AT,
            order_no="2026120416300012345678",
            account_no="10000001",
            meter_no="M100000011",
            channel="alipay",
            amount=27200,
            volume=10000,
            parts=(TierPart(1, 5000, "2.61", 13050), TierPart(2, 5000, "2.83", 14150)),
        ),
    )
    device.close()
    out = path.read_bytes()
    for text in (
        b"2026120416300012345678",
        b"CNY 272.00",
        b"100.00 m3",
        b"Tier 1 50.00 m3 x2.61",
        b"CNY 130.50",
        b"Tier 2 50.00 m3 x2.83",
        b"CNY 141.50",
        b"alipay",
    ):
        assert text in out, text
    assert CUT in out


def test_printer_config() -> None:
    assert open_printer("") is None
    dummy = open_printer("dummy")
    dummy.text("x\n")
    assert dummy.output.endswith(b"x\n")
    with pytest.raises(ValueError, match="printer"):
        open_printer("serial:/dev/ttyS0")


def test_units_are_exact() -> None:
    assert volume_text(1) == "0.01 m3"
    assert volume_text(100005) == "1000.05 m3"
    assert money_text(7) == "CNY 0.07"
