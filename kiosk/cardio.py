"""Card I/O at the kiosk: read and write the Ranqi image on an NTAG215 through nfcpy.

Everything here works on a connected nfcpy tag (``clf.connect(rdwr=...)``);
:func:`open_reader` opens nfcpy's ``udp`` driver on loopback for the virtual
cards of :mod:`kiosk.virtual_card`, a real kiosk opens ``usb`` instead. A write
is the page plan of :func:`cardfmt.plan_write`, one WRITE command per page in
plan order, then a full read-back compared with the target image: a function
here returns only when the card provably holds the target, and raises
:class:`CardIOError` otherwise (never half a success).
"""

from __future__ import annotations

import ipaddress
import platform
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import nfc  # type: ignore[import-untyped]
import nfc.clf.udp  # type: ignore[import-untyped]
import nfc.tag  # type: ignore[import-untyped]
import nfc.tag.tt2  # type: ignore[import-untyped]
import nfc.tag.tt2_nxp  # type: ignore[import-untyped]

from cardfmt import FIRST_PAGE, IMAGE_SIZE, PAGE_SIZE, plan_write

IMAGE_PAGES = IMAGE_SIZE // PAGE_SIZE
LAST_IMAGE_PAGE = FIRST_PAGE + IMAGE_PAGES - 1
CFG0_PAGE, CFG1_PAGE, PWD_PAGE, PACK_PAGE = 131, 132, 133, 134
PASSWORD_SIZE = 6
#: FAST_READ answers at most this many pages (252 bytes fit every nfcpy reader's frame)
FAST_READ_PAGES = 63


class CardIOError(Exception):
    """The card operation did not complete; the message says what the card now holds."""


class NoCard(CardIOError):
    """No card came into the field before the time was up."""


class NotNtag215(CardIOError):
    """The tag is not an NTAG215 (a Ranqi card always is)."""


class AuthFailed(CardIOError):
    """The tag refused the password (wrong card, or a card issued under another password)."""


class ReadFailed(CardIOError):
    """Reading the card failed (pulled away or refused): nothing was written."""


class WriteFailed(CardIOError):
    """A write stopped part-way: ``written`` of ``planned`` pages landed.

    The plan order keeps the card's previous state valid until the new slot is
    complete, so the card reads as either the old or the new image; re-read it.
    """

    def __init__(self, message: str, *, written: int, planned: int, gone: bool) -> None:
        super().__init__(f"{message} after {written} of {planned} pages")
        self.written, self.planned = written, planned
        #: True if the card stopped answering (pulled), False if it refused (NAK)
        self.gone = gone


class NotVerified(CardIOError):
    """The read-back after writing differs from the target image."""


@dataclass(frozen=True)
class WriteResult:
    """A verified write: how many WRITE commands it took and what the card now holds."""

    pages_written: int
    image: bytes


class _LoopbackUdpDevice(nfc.clf.udp.Device):  # type: ignore[misc]
    """nfcpy's udp driver with its socket bound to 127.0.0.1 (upstream leaves it unbound)."""

    def _create_socket(self) -> None:
        # nfcpy 1.0.4 makes a new socket for every sense; an unbound UDP socket would
        # bind to 0.0.0.0 on first send and take datagrams from the whole network
        if self.socket is None:
            super()._create_socket()
            cast(socket.socket, self.socket).bind(("127.0.0.1", 0))


def open_reader(port: int, host: str = "127.0.0.1") -> Any:
    """nfcpy's ContactlessFrontend on the udp driver, talking to ``host:port`` on loopback only."""
    address = socket.gethostbyname(host)
    if not ipaddress.ip_address(address).is_loopback:
        raise ValueError(f"the virtual reader talks to loopback only, not {host}")
    device = _LoopbackUdpDevice(address, port)
    # what nfc.clf.udp.init() sets, so nfcpy's log lines and str(clf) read the same
    device._vendor_name = platform.uname()[0]
    device._device_name = "IP-Stack"
    device._chipset_name = "UDP"
    device._path = f"udp:{address}:{port}"
    clf = nfc.ContactlessFrontend()
    with clf.lock:
        clf.device = device
    return clf


def connect_tag(clf: Any, *, timeout: float = 3.0) -> Any:
    """Wait up to ``timeout`` seconds for a type A tag and return nfcpy's activated tag."""
    deadline = time.monotonic() + timeout
    tag = clf.connect(
        # type A only: polling for B and F would cost the udp driver a second each
        rdwr={"targets": ["106A"], "on-connect": lambda tag: False, "iterations": 1},
        terminate=lambda: time.monotonic() > deadline,
    )
    if not isinstance(tag, nfc.tag.Tag):
        raise NoCard(f"no card in the field within {timeout} s")
    return tag


def require_ntag215(tag: Any) -> None:
    """Refuse any tag nfcpy did not identify as an NTAG215."""
    if not isinstance(tag, nfc.tag.tt2_nxp.NTAG215):
        raise NotNtag215(f"{tag} is not an NTAG215")


def _gone(error: Exception) -> bool:
    return isinstance(error, nfc.tag.TagCommandError) and error.errno == nfc.tag.TIMEOUT_ERROR


def read_pages(tag: Any, first: int, last: int, *, fast: bool = True) -> bytes:
    """Pages ``first..last`` of the tag: FAST_READ in chunks, or nfcpy's 4-page READs."""
    data = bytearray()
    try:
        if fast:
            # nfcpy's own read() waits 5 ms per READ; FAST_READ takes its 100 ms default
            for start in range(first, last + 1, FAST_READ_PAGES):
                end = min(start + FAST_READ_PAGES - 1, last)
                chunk = tag.transceive(bytes([0x3A, start, end]))
                if len(chunk) != (end - start + 1) * PAGE_SIZE:
                    raise ReadFailed(f"FAST_READ {start}..{end} refused ({bytes(chunk).hex()})")
                data += chunk
        else:
            for start in range(first, last + 1, 4):
                data += tag.read(start)
    except nfc.tag.TagCommandError as error:
        cause = "card left the field" if _gone(error) else f"tag error: {error}"
        raise ReadFailed(f"reading pages {first}..{last}: {cause}") from error
    return bytes(data[: (last - first + 1) * PAGE_SIZE])


def read_image(tag: Any, *, fast: bool = True) -> bytes:
    """The 504-byte Ranqi image (user pages 4..129) of an NTAG215."""
    require_ntag215(tag)
    return read_pages(tag, FIRST_PAGE, LAST_IMAGE_PAGE, fast=fast)


def _check_password(password: bytes) -> None:
    if len(password) != PASSWORD_SIZE:
        raise ValueError("a tag password is 6 bytes: PWD (4) and PACK (2)")


def authenticate(tag: Any, password: bytes) -> None:
    """PWD_AUTH with the card's 6-byte password (PWD + expected PACK); raise if refused."""
    _check_password(password)
    if not tag.authenticate(password):
        raise AuthFailed("the card refused the password (or answered with the wrong PACK)")


def protected_from(tag: Any) -> int:
    """The card's AUTH0: the first page a write needs the password for (>= 135: none)."""
    return read_pages(tag, CFG0_PAGE, CFG0_PAGE)[3]


def write_pages(tag: Any, plan: Sequence[tuple[int, bytes]]) -> None:
    """Send one WRITE per (page, data) in the given order; raise WriteFailed where it stops."""
    for written, (page, data) in enumerate(plan):
        try:
            tag.write(page, data)
        except nfc.tag.TagCommandError as error:
            gone = _gone(error)
            what = "card left the field" if gone else f"card refused page {page} ({error})"
            raise WriteFailed(what, written=written, planned=len(plan), gone=gone) from error


def write_image(
    tag: Any, old: bytes, new: bytes, *, password: bytes | None = None, fast: bool = True
) -> WriteResult:
    """Write ``new`` over ``old`` (the image read in this session) and verify it.

    Only the changed pages are written, in :func:`cardfmt.plan_write` order; a
    plan that would overwrite the card's current slot raises ValueError before
    any command. With ``password``, a protected card is authenticated first and
    a card never protected yet gets the password after the verified write.
    """
    require_ntag215(tag)
    plan = plan_write(old, new)
    protected = True
    if password is not None:
        _check_password(password)
        protected = protected_from(tag) <= LAST_IMAGE_PAGE
        if protected:
            authenticate(tag, password)
    write_pages(tag, plan)
    try:
        image = read_image(tag, fast=fast)
    except ReadFailed as error:
        raise NotVerified(f"all {len(plan)} pages sent, read-back failed: {error}") from error
    if image != new:
        raise NotVerified(f"all {len(plan)} pages sent, but the card reads differently")
    if not protected and password is not None:
        protect_card(tag, password)
    return WriteResult(pages_written=len(plan), image=image)


def protect_card(tag: Any, password: bytes) -> None:
    """Set the card's 6-byte password and protect writes from the first image page on.

    Written page by page in an order that never leaves AUTH0 set over an unknown
    password: PACK, PWD, CFG1, and AUTH0 in CFG0 last. It takes effect from the
    next activation (the chip latches its configuration then).
    """
    _check_password(password)
    config = bytearray(read_pages(tag, CFG0_PAGE, PACK_PAGE))
    config[4] &= 0x7F  # PROT off: anyone may read the card, only writes need the password
    config[3] = FIRST_PAGE
    # nfcpy's tag.protect() writes AUTH0 first: a tear right after it would lock the
    # card under the factory password; AUTH0 last keeps every tear recoverable
    write_pages(
        tag,
        [
            (PACK_PAGE, password[4:6] + b"\x00\x00"),
            (PWD_PAGE, password[0:4]),
            (CFG1_PAGE, bytes(config[4:8])),
            (CFG0_PAGE, bytes(config[0:4])),
        ],
    )
    if protected_from(tag) != FIRST_PAGE:
        raise NotVerified("AUTH0 did not read back as the first image page")


def provision_card(tag: Any, image: bytes, password: bytes) -> WriteResult:
    """Issue a card: write the issue image (``cardfmt.issue_card``) and set its tag password.

    A card already protected (a retried issue) must take the same password; the
    password goes on after the image, as :func:`protect_card` writes it.
    """
    require_ntag215(tag)
    return write_image(tag, read_image(tag), image, password=password)
