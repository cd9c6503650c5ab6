"""An IC-card gas meter in software: takes a card image, applies its purchase, writes its report.

The meter holds only public keys (it can verify the server's purchase slots,
never make one) and its own report key, ``cardfmt.derive_meter_key(master,
meter_no)``. It applies a purchase count N only when N is its own count + 1, so
a card copied before a load, a retried tap or the same card twice adds no gas.
A load that would take it over its capacity is refused whole and stays on the
card: a meter never truncates gas. Volumes are integer 0.01 m³.

One addition over the bare rule, the remedy :mod:`cardfmt.rules` asks of
meters: the meter remembers how much it took under its own N, and when it sees
the same N again with a larger signed pending volume (the kiosk topped up a
card whose report had been torn) it takes the difference, once.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

import cardfmt
from cardfmt import Alarm, CardError, MeterReport
from cardfmt.image import REPORT_OFFSET, REPORT_SIZE


class Outcome(enum.StrEnum):
    """What the meter did with a card."""

    #: the purchase was added to the meter
    APPLIED = "applied"
    #: nothing new on the card (already applied, or nothing loaded): report written
    NOTHING_NEW = "nothing_new"
    #: the card's N is not the meter's next (a card from the past, or N skipped): report written
    OUT_OF_SEQUENCE = "out_of_sequence"
    #: the load would exceed the capacity: refused whole, it stays on the card; report written
    OVER_CAPACITY = "over_capacity"
    #: not this meter's card, or forged, torn or unreadable: card left untouched
    REFUSED = "refused"


class ValveReason(enum.StrEnum):
    """Why the valve is closed."""

    NO_GAS = "no_gas"
    LEAK = "leak"


NO_ALARMS = Alarm(0)
_ALARMS = {"leak": Alarm.LEAK, "tamper": Alarm.TAMPER, "low_battery": Alarm.LOW_BATTERY}


def _alarm(kind: str) -> Alarm:
    if kind not in _ALARMS:
        raise ValueError(f"unknown alarm {kind!r}: one of {', '.join(_ALARMS)}")
    return _ALARMS[kind]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class InsertResult:
    """The meter's verdict on one insertion, and the report it wrote (None if refused)."""

    outcome: Outcome
    applied_volume: int = 0
    report: MeterReport | None = None
    detail: str = ""


@dataclass
class MeterSimulator:
    """One gas meter: its counters, valve, alarms and keys."""

    meter_no: str
    #: the meter's HMAC report key, cardfmt.derive_meter_key(master_key, meter_no)
    report_key: bytes = field(repr=False)
    #: key version → the server's Ed25519 public key
    public_keys: Mapping[int, Ed25519PublicKey] = field(repr=False)
    #: the most gas the meter may hold, 0.01 m³
    capacity: int
    #: 购气次数: the last purchase count applied
    purchase_count: int = 0
    remaining: int = 0
    total_used: int = 0
    total_purchased: int = 0
    #: volume taken under ``purchase_count`` (for a top-up under the same N)
    applied_under_count: int = 0
    #: the highest 补卡 count seen; an older card is a blacklisted one
    replacement_count: int = 0
    valve_closed_for: ValveReason | None = ValveReason.NO_GAS
    alarms: Alarm = NO_ALARMS
    report_seq: int = 0
    clock: Callable[[], dt.datetime] = field(default=_now, repr=False)

    @classmethod
    def new(
        cls,
        meter_no: str,
        *,
        master_key: bytes,
        public_keys: Mapping[int, Ed25519PublicKey],
        capacity: int,
        **state: object,
    ) -> MeterSimulator:
        """A meter whose report key is derived from the utility's master key."""
        key = cardfmt.derive_meter_key(master_key, meter_no)
        return cls(meter_no, key, public_keys, capacity, **state)  # type: ignore[arg-type]

    @property
    def valve_open(self) -> bool:
        """Whether gas can flow."""
        return self.valve_closed_for is None

    def insert(self, card: bytes) -> tuple[bytes, InsertResult]:
        """Read ``card``, apply its purchase if due, and return the card with the new report."""
        try:
            # the header first, so another meter's card is refused as such, not as a bad MAC
            unverified = cardfmt.decode(card, public_keys=self.public_keys)
            if unverified.header.meter_no != self.meter_no:
                raise CardError(
                    cardfmt.Reason.CARD_MISMATCH, f"card is for meter {unverified.header.meter_no}"
                )
            image = cardfmt.decode(card, public_keys=self.public_keys, meter_key=self.report_key)
        except CardError as error:
            return card, InsertResult(Outcome.REFUSED, detail=str(error))
        if image.header.replacement_count < self.replacement_count:
            return card, InsertResult(Outcome.REFUSED, detail="a replaced (blacklisted) card")
        self.replacement_count = image.header.replacement_count

        purchase = image.current
        outcome, volume = Outcome.NOTHING_NEW, 0
        if purchase.purchase_count == self.purchase_count + 1:
            volume = purchase.pending_volume
        elif purchase.purchase_count == self.purchase_count:
            volume = max(0, purchase.pending_volume - self.applied_under_count)
        elif purchase.pending_volume:
            outcome = Outcome.OUT_OF_SEQUENCE
        if volume and self.remaining + volume > self.capacity:
            outcome, volume = Outcome.OVER_CAPACITY, 0
        elif volume:
            outcome = Outcome.APPLIED
            if purchase.purchase_count != self.purchase_count:
                self.purchase_count, self.applied_under_count = purchase.purchase_count, 0
            self.applied_under_count += volume
            self.remaining += volume
            self.total_purchased += volume
            if self.valve_closed_for is ValveReason.NO_GAS:
                self.valve_closed_for = None
        report = self._report()
        return self._with_report(card, image, report), InsertResult(outcome, volume, report)

    def burn(self, volume: int) -> int:
        """Use up to ``volume`` of gas; close the valve when the meter runs dry. Returns the use."""
        if isinstance(volume, bool) or not isinstance(volume, int) or volume < 0:
            raise ValueError(f"volume must be a non-negative integer, got {volume!r}")
        if not self.valve_open:
            return 0
        used = min(volume, self.remaining)
        self.remaining -= used
        self.total_used += used
        if self.remaining == 0:
            self.valve_closed_for = ValveReason.NO_GAS
        return used

    def raise_alarm(self, kind: str) -> None:
        """Flag ``leak``, ``tamper`` or ``low_battery``; a leak shuts the valve."""
        self.alarms |= _alarm(kind)
        if kind == "leak":
            self.valve_closed_for = ValveReason.LEAK

    def clear_alarm(self, kind: str) -> None:
        """A service visit cleared the alarm; after a leak the valve opens only with gas left."""
        self.alarms &= ~_alarm(kind)
        if kind == "leak" and self.valve_closed_for is ValveReason.LEAK:
            self.valve_closed_for = None if self.remaining else ValveReason.NO_GAS

    def _report(self) -> MeterReport:
        self.report_seq += 1
        report = MeterReport(
            meter_no=self.meter_no,
            report_seq=self.report_seq,
            count_applied=self.purchase_count,
            remaining=self.remaining,
            total_used=self.total_used,
            total_purchased=self.total_purchased,
            valve_open=self.valve_open,
            alarms=self.alarms,
            reported_at=self.clock().replace(microsecond=0),
        )
        return cardfmt.seal_report(report, self.report_key)

    @staticmethod
    def _with_report(card: bytes, image: cardfmt.CardImage, report: MeterReport) -> bytes:
        # splice only the report block: re-encoding the whole image would zero a torn slot
        encoded = cardfmt.encode(replace(image, report=report))
        end = REPORT_OFFSET + REPORT_SIZE
        return card[:REPORT_OFFSET] + encoded[REPORT_OFFSET:end] + card[end:]
