"""Receipts on the kiosk's ESC/POS printer (python-escpos): one per load, one per walk-up payment.

The printer is chosen by one configuration string (``RANQI_KIOSK_PRINTER``):
``""`` no printer, ``dummy`` (kept in memory), ``file:/dev/usb/lp0`` (a device or
file), ``network:192.0.2.7:9100``, ``usb:0x0416:0x5011``.

Receipts are printed in ASCII (English, with the account and meter numbers as
they are): python-escpos encodes text through single-byte code pages, none of
which carries Chinese; Chinese on a receipt printer needs the model's own GB18030
mode (``FS &``), which differs between makes. The screen shows Chinese.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
WIDTH = 32  #: characters per line on a 58 mm roll


@dataclass(frozen=True)
class LoadReceipt:
    """Gas loaded onto a card at this kiosk (after the read-back was confirmed)."""

    kiosk: str
    at: dt.datetime
    account_no: str
    meter_no: str
    card_no: str
    #: gas this tap added to the card, 0.01 m³
    loaded: int
    #: the purchase count N the card now carries
    purchase_count: int
    #: gas on the card for the meter to take, 0.01 m³
    pending_volume: int


@dataclass(frozen=True)
class TierPart:
    """One tier of a purchase's price."""

    tier: int
    volume: int
    price: str
    amount: int


@dataclass(frozen=True)
class PurchaseReceipt:
    """A walk-up purchase paid at this kiosk."""

    kiosk: str
    at: dt.datetime
    order_no: str
    account_no: str
    meter_no: str
    channel: str
    #: fen
    amount: int
    #: 0.01 m³
    volume: int
    parts: Sequence[TierPart] = field(default_factory=tuple)


def volume_text(volume: int) -> str:
    """0.01 m³ units as ``12.34 m3`` (integer arithmetic, never float)."""
    return f"{volume // 100}.{volume % 100:02d} m3"


def money_text(fen: int) -> str:
    """Fen as ``CNY 12.34``."""
    return f"CNY {fen // 100}.{fen % 100:02d}"


def _line(label: str, value: str) -> str:
    gap = max(1, WIDTH - len(label) - len(value))
    return f"{label}{' ' * gap}{value}\n"


def _ascii(text: str) -> str:
    # a kiosk name in Chinese must not garble the printer: keep only what it can print
    return text.encode("ascii", "replace").decode("ascii")


def _time(at: dt.datetime) -> str:
    return at.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M:%S")


def open_printer(config: str) -> Any | None:
    """The printer the configuration string names (see the module doc), or None for none."""
    kind, _, rest = config.strip().partition(":")
    if not kind:
        return None
    # imported here, after the program set up logging: escpos calls logging.basicConfig()
    # at import, which would silently win over the kiosk's own logging set-up
    from escpos import printer as escpos_printer  # type: ignore[import-untyped]

    if kind == "dummy":
        return escpos_printer.Dummy()
    if kind == "file" and rest:
        device = escpos_printer.File(rest)
        device.open()
        return device
    if kind == "network" and rest:
        host, _, port = rest.rpartition(":")
        return escpos_printer.Network(host or rest, int(port) if host else 9100)
    if kind == "usb" and rest:
        vendor, _, product = rest.partition(":")
        return escpos_printer.Usb(int(vendor, 16), int(product, 16))
    raise ValueError(
        f"printer: expected dummy, file:PATH, network:HOST[:PORT] or usb:VID:PID, got {config!r}"
    )


def _header(device: Any, title: str, kiosk: str, at: dt.datetime) -> None:
    device.set(align="center", bold=True, double_height=True)
    device.text("RANQI GAS\n")
    device.set(align="center", bold=False, double_height=False)
    device.text(f"{title}\n")
    device.set(align="left")
    device.text(_line("Kiosk", _ascii(kiosk)[: WIDTH - 6]))
    device.text(_line("Time", _time(at)))


def print_load(device: Any, receipt: LoadReceipt) -> None:
    """Print the receipt of a card load: kiosk, time, account, meter, gas loaded, N."""
    _header(device, "Gas loaded onto card", receipt.kiosk, receipt.at)
    device.text(_line("Account", receipt.account_no))
    device.text(_line("Meter", receipt.meter_no))
    device.text(_line("Card", receipt.card_no))
    device.text(_line("Loaded now", volume_text(receipt.loaded)))
    device.text(_line("On card for meter", volume_text(receipt.pending_volume)))
    device.text(_line("Purchase no. (N)", str(receipt.purchase_count)))
    device.text("\nInsert the card into your meter.\n")
    device.cut()


def print_purchase(device: Any, receipt: PurchaseReceipt) -> None:
    """Print the receipt of a walk-up payment: order, amount, volume and the tier split."""
    _header(device, "Gas purchase paid", receipt.kiosk, receipt.at)
    device.text(_line("Order", receipt.order_no))
    device.text(_line("Account", receipt.account_no))
    device.text(_line("Meter", receipt.meter_no))
    device.text(_line("Paid by", receipt.channel))
    for part in receipt.parts:
        device.text(
            _line(
                f"Tier {part.tier} {volume_text(part.volume)} x{part.price}",
                money_text(part.amount),
            )
        )
    device.set(bold=True)
    device.text(_line("Volume", volume_text(receipt.volume)))
    device.text(_line("Amount", money_text(receipt.amount)))
    device.set(bold=False)
    device.text("\nTap your card at the kiosk to load it.\n")
    device.cut()
