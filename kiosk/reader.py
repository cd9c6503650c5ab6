"""The kiosk's reader loop, in nfcpy's tagtool shape: open, connect, work, close in finally.

One tap: read the card, hand its image to the host (the server, through the
kiosk API client), and if the host answers with a write order, write the
target image with the card's password, read it back and only then confirm the
write id. A write that fails is never confirmed: the server issues the credits
again on the next tap, and the card still reads as its old state.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kiosk.cardio import CardIOError, NoCard, connect_tag, read_image, write_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriteOrder:
    """What the host wants on the card: a signed target image, for this tap only."""

    write_id: str
    #: the 504-byte target image (server-signed purchase slot)
    target: bytes = field(repr=False)
    #: the card's 6-byte NTAG password (PWD + PACK), handed over for this write only
    password: bytes = field(repr=False)


class CardHost(Protocol):
    """The server side of a tap, as the reader loop sees it."""

    def sync(self, uid: bytes, image: bytes) -> WriteOrder | None:
        """Take the card's image (and its meter report); return a write order if credits wait."""

    def confirm(self, write_id: str, image: bytes) -> None:
        """Report that the card now reads back as the target of ``write_id``."""


class TapStatus(enum.StrEnum):
    """How a tap ended."""

    NO_CARD = "no_card"
    #: read and synced, nothing to write
    SYNCED = "synced"
    #: written, read back and confirmed
    LOADED = "loaded"
    #: the card was pulled or refused: nothing confirmed
    FAILED = "failed"


@dataclass(frozen=True)
class TapResult:
    """The outcome of one :meth:`ReaderLoop.run_once`, for the touch screen."""

    status: TapStatus
    uid: bytes | None = None
    pages_written: int = 0
    error: str = ""


class ReaderLoop:
    """Serve taps one at a time: ``run_once`` for one, ``run`` until told to stop."""

    def __init__(
        self,
        open_frontend: Callable[[], Any],
        host: CardHost,
        *,
        wait: float = 3.0,
        await_removal: bool = False,
    ) -> None:
        self.open_frontend = open_frontend
        self.host = host
        #: seconds each run_once waits for a card
        self.wait = wait
        #: hold the tap until the card leaves, so one card is served once per tap
        self.await_removal = await_removal
        self.stopping = threading.Event()

    def run_once(self) -> TapResult:
        """Open the reader, serve one card, close the reader (whatever happened)."""
        clf = self.open_frontend()
        try:
            try:
                tag = connect_tag(clf, timeout=self.wait)
            except NoCard:
                return TapResult(TapStatus.NO_CARD)
            result = self._serve(tag)
            if self.await_removal:
                while not self.stopping.is_set() and tag.is_present:
                    time.sleep(0.1)
            return result
        finally:
            clf.close()

    def _serve(self, tag: Any) -> TapResult:
        uid = bytes(tag.identifier)
        try:
            image = read_image(tag)
            order = self.host.sync(uid, image)
            if order is None:
                return TapResult(TapStatus.SYNCED, uid)
            written = write_image(tag, image, order.target, password=order.password)
        except (CardIOError, ValueError) as error:
            # ValueError: a target that would overwrite the card's current slot
            log.warning("tap on %s failed: %s", uid.hex(), error)
            return TapResult(TapStatus.FAILED, uid, error=str(error))
        self.host.confirm(order.write_id, written.image)
        return TapResult(TapStatus.LOADED, uid, pages_written=written.pages_written)

    def run(self) -> None:
        """Serve taps until :meth:`stop`; a host error costs that tap, not the kiosk."""
        while not self.stopping.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("tap failed in the host")

    def stop(self) -> None:
        """Let :meth:`run` return after the current tap."""
        self.stopping.set()
