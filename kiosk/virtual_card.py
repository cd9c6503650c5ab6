"""A virtual NTAG215 in a virtual reader field, speaking nfcpy's ``udp`` driver datagrams.

nfcpy's ``udp:HOST:PORT`` driver (``nfc/clf/udp.py``) is a reader whose radio
is a UDP socket: every frame is one datagram ``b"<brty> <hex>"`` (``b"106A 26"``
is a SENS_REQ at 106 kbit/s type A), answered by one datagram in the same form,
and ``b"RFOFF"`` when the reader switches its field off. :class:`VirtualField`
is the far end of that socket, bound to 127.0.0.1 only: a reader field that
holds at most one :class:`VirtualNtag215` at a time (put a card in, take it out,
or have it pulled away after a chosen command to tear a write on purpose).

The card answers as an NTAG215 does for what nfcpy's Type 2 / NTAG21x code
sends: REQA/WUPA (ATQA ``44 00``), anticollision and select over two cascade
levels for its 7-byte UID (SAK ``04`` then ``00``), READ (16 bytes with
roll-over), FAST_READ, WRITE, COMPATIBILITY_WRITE is not supported, GET_VERSION,
READ_SIG, READ_CNT, PWD_AUTH with AUTHLIM, HLTA, and the NXP memory map of 135
pages with password protection from AUTH0 (writes; reads too when PROT is set),
static and dynamic lock bits and CFGLCK. Errors answer with a 4-bit NAK (one
byte, ``0x00`` invalid argument, ``0x04`` authentication limit) and the card
drops to IDLE, as the datasheet says; an unknown command gets silence.

Simplifications (none of which nfcpy or the kiosk relies on): no UID/counter
mirror, the NFC counter never counts, block-lock bits are not enforced, the
failed-authentication counter is not persisted, and a read-protected READ that
starts below AUTH0 rolls over to page 0 at AUTH0.
"""

from __future__ import annotations

import enum
import hashlib
import os
import select
import socket
import threading
from binascii import hexlify, unhexlify
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PAGE_COUNT = 135
PAGE_SIZE = 4
MEMORY_SIZE = PAGE_COUNT * PAGE_SIZE
USER_FIRST_PAGE, USER_LAST_PAGE = 4, 129
DYNAMIC_LOCK_PAGE, CFG0_PAGE, CFG1_PAGE, PWD_PAGE, PACK_PAGE = 130, 131, 132, 133, 134

#: GET_VERSION answer of an NTAG215 (nfcpy's ``VERSION_MAP`` picks ``NTAG215`` from it)
NTAG215_VERSION = bytes.fromhex("0004040201001103")
ATQA = bytes.fromhex("4400")
CASCADE_TAG = 0x88
SAK_CASCADE, SAK_COMPLETE = 0x04, 0x00

ACK = b"\x0a"
NAK_INVALID = b"\x00"
NAK_AUTH_LIMIT = b"\x04"

LOOPBACK = "127.0.0.1"
BITRATE = b"106A"


class CardState(enum.Enum):
    """ISO 14443-3 states of the card (ACTIVE is the only one that takes memory commands)."""

    IDLE = "idle"
    READY1 = "ready1"
    READY2 = "ready2"
    ACTIVE = "active"
    HALT = "halt"


def _xor(data: bytes) -> int:
    value = 0
    for byte in data:
        value ^= byte
    return value


def factory_memory(uid: bytes) -> bytes:
    """The 540 bytes of a new NTAG215 with ``uid``: empty NDEF, no password, nothing locked."""
    if len(uid) != 7 or uid[0] != 0x04:
        raise ValueError("an NTAG215 UID is 7 bytes starting with 0x04 (NXP)")
    memory = bytearray(MEMORY_SIZE)
    memory[0:4] = uid[0:3] + bytes([CASCADE_TAG ^ _xor(uid[0:3])])
    memory[4:8] = uid[3:7]
    memory[8:12] = bytes([_xor(uid[3:7]), 0x48, 0x00, 0x00])
    memory[12:16] = bytes.fromhex("e1103e00")  # NDEF CC: 496 bytes of data area
    memory[16:20] = bytes.fromhex("0300fe00")  # empty NDEF message TLV, as shipped
    memory[DYNAMIC_LOCK_PAGE * 4 : DYNAMIC_LOCK_PAGE * 4 + 4] = bytes.fromhex("000000bd")
    memory[CFG0_PAGE * 4 : CFG0_PAGE * 4 + 4] = bytes.fromhex("040000ff")  # AUTH0 = 0xFF: off
    memory[CFG1_PAGE * 4 : CFG1_PAGE * 4 + 4] = bytes.fromhex("00050000")
    memory[PWD_PAGE * 4 : PWD_PAGE * 4 + 4] = b"\xff\xff\xff\xff"
    return bytes(memory)


def uid_for(serial: int) -> bytes:
    """A stable NXP-style 7-byte UID for a demo card number (``04`` + 6 bytes)."""
    return b"\x04" + hashlib.sha256(b"ranqi virtual card %d" % serial).digest()[:6]


class VirtualNtag215:
    """The NTAG215 chip: memory, ISO 14443-3 state and the command set nfcpy uses.

    Thread-safety is the field's job; a card object is only driven by one field at a time.
    """

    def __init__(
        self,
        uid: bytes | None = None,
        *,
        memory: bytes | None = None,
        path: Path | None = None,
        version: bytes = NTAG215_VERSION,
    ) -> None:
        if memory is None:
            memory = factory_memory(uid if uid is not None else b"\x04" + os.urandom(6))
        if len(memory) != MEMORY_SIZE:
            raise ValueError(f"NTAG215 memory is {MEMORY_SIZE} bytes, got {len(memory)}")
        self.memory = bytearray(memory)
        #: where every successful write is saved (None: memory only)
        self.path = path
        #: GET_VERSION answer; another value makes the card pose as another chip (tests)
        self.version = version
        self.state = CardState.IDLE
        self.authenticated = False
        self.failed_auths = 0
        # AUTH0 and ACCESS as latched when the card was last activated
        self._auth0, self._access = 0xFF, 0x00
        self._latch_config()

    @classmethod
    def load(cls, path: Path, *, uid: bytes | None = None) -> VirtualNtag215:
        """The card saved at ``path``, or a new one (with ``uid``) saved there from now on."""
        if path.exists():
            return cls(memory=path.read_bytes(), path=path)
        card = cls(uid, path=path)
        card.save()
        return card

    def save(self) -> None:
        """Write the memory to ``path`` atomically (a crash never leaves half a file)."""
        if self.path is None:
            return
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_bytes(bytes(self.memory))
        os.replace(temporary, self.path)

    @property
    def uid(self) -> bytes:
        """The 7-byte UID from pages 0 and 1."""
        return bytes(self.memory[0:3] + self.memory[4:8])

    def page(self, number: int) -> bytes:
        """The raw 4 bytes of a page, as stored (PWD and PACK included): for tests and dumps."""
        return bytes(self.memory[number * 4 : number * 4 + 4])

    @property
    def user_memory(self) -> bytes:
        """Pages 4..129 as stored: the 504 bytes the Ranqi image lives in."""
        return bytes(self.memory[USER_FIRST_PAGE * 4 : (USER_LAST_PAGE + 1) * 4])

    @property
    def auth0(self) -> int:
        """First page that needs PWD_AUTH (0xFF and above: protection off), as in effect."""
        return self._auth0

    @property
    def access(self) -> int:
        """The ACCESS byte (PROT bit 7, CFGLCK bit 6, AUTHLIM bits 0..2), as in effect."""
        return self._access

    def _latch_config(self) -> None:
        # the chip reads its configuration at activation: writing AUTH0 takes effect on
        # the next REQA/WUPA, which is why nfcpy's protect() re-senses before authenticating
        self._auth0 = self.memory[CFG0_PAGE * 4 + 3]
        self._access = self.memory[CFG1_PAGE * 4]

    def power_off(self) -> None:
        """The field went away: back to IDLE, authentication forgotten."""
        self.state = CardState.IDLE
        self.authenticated = False

    # -- the RF protocol -------------------------------------------------------

    def handle(self, frame: bytes) -> bytes | None:
        """The card's answer to one reader frame, or None for silence."""
        if frame in (b"\x26", b"\x52"):  # REQA, WUPA
            if frame == b"\x26" and self.state is CardState.HALT:
                return None
            # a udp reader that died never sent RFOFF: a new REQA starts a new session
            self.power_off()
            self._latch_config()
            self.state = CardState.READY1
            return ATQA
        if self.state in (CardState.READY1, CardState.READY2):
            return self._anticollision(frame)
        if self.state is CardState.ACTIVE:
            return self._command(frame)
        return None

    def _cascade(self, level: int) -> bytes:
        uid = self.uid
        part = bytes([CASCADE_TAG]) + uid[0:3] if level == 1 else uid[3:7]
        return part + bytes([_xor(part)])

    def _anticollision(self, frame: bytes) -> bytes | None:
        level = 1 if self.state is CardState.READY1 else 2
        sel = 0x93 if level == 1 else 0x95
        if frame == bytes([sel, 0x20]):
            return self._cascade(level)
        if frame == bytes([sel, 0x70]) + self._cascade(level):
            self.state = CardState.READY2 if level == 1 else CardState.ACTIVE
            return bytes([SAK_CASCADE if level == 1 else SAK_COMPLETE])
        self.state = CardState.IDLE
        return None

    def _nak(self, code: bytes = NAK_INVALID) -> bytes:
        # after a NAK an NTAG goes back to IDLE: the reader must select it again
        self.power_off()
        return code

    def _readable(self, page: int) -> bool:
        protected = self.access & 0x80 and page >= self.auth0
        return not protected or self.authenticated

    def _read_page(self, page: int) -> bytes:
        if page in (PWD_PAGE, PACK_PAGE):
            return b"\x00\x00\x00\x00"  # PWD and PACK always read as zero
        return bytes(self.memory[page * 4 : page * 4 + 4])

    def _command(self, frame: bytes) -> bytes | None:
        code, args = frame[0], frame[1:]
        if code == 0x30 and len(args) == 1:  # READ
            return self._read(args[0])
        if code == 0x3A and len(args) == 2:  # FAST_READ
            return self._fast_read(args[0], args[1])
        if code == 0xA2 and len(args) == 5:  # WRITE
            return self._write(args[0], args[1:5])
        if code == 0x60 and not args:  # GET_VERSION
            return self.version
        if code == 0x3C and len(args) == 1:  # READ_SIG
            if args[0] != 0:
                return self._nak()
            # not NXP's ECC signature: nobody can forge theirs, so don't pretend
            return hashlib.sha256(b"virtual NTAG215 " + self.uid).digest()
        if code == 0x39 and len(args) == 1:  # READ_CNT
            return b"\x00\x00\x00" if args[0] == 2 else self._nak()
        if code == 0x1B and len(args) == 4:  # PWD_AUTH
            return self._pwd_auth(args)
        if frame == b"\x50\x00":  # HLTA
            self.state = CardState.HALT
            self.authenticated = False
            return None
        self.power_off()  # unknown command: silence and IDLE (nfcpy's 1A probe lands here)
        return None

    def _read(self, start: int) -> bytes:
        if start >= PAGE_COUNT or not self._readable(start):
            return self._nak()
        limit = PAGE_COUNT
        if self.access & 0x80 and not self.authenticated and self.auth0 < PAGE_COUNT:
            limit = self.auth0  # roll over at the protected area, not past it
        return b"".join(self._read_page((start + i) % limit) for i in range(4))

    def _fast_read(self, start: int, end: int) -> bytes:
        if start > end or end >= PAGE_COUNT:
            return self._nak()
        if not all(self._readable(page) for page in range(start, end + 1)):
            return self._nak()
        return b"".join(self._read_page(page) for page in range(start, end + 1))

    def _locked(self, page: int) -> bool:
        lock0, lock1 = self.memory[10], self.memory[11]
        if 3 <= page <= 7:
            return bool(lock0 >> page & 1)
        if 8 <= page <= 15:
            return bool(lock1 >> (page - 8) & 1)
        if USER_FIRST_PAGE <= page <= USER_LAST_PAGE:
            # NTAG215 dynamic lock bits: LOCK2 bit i locks pages 16+16i .. 31+16i
            return bool(self.memory[DYNAMIC_LOCK_PAGE * 4] >> ((page - 16) // 16) & 1)
        if page in (CFG0_PAGE, CFG1_PAGE):
            return bool(self.access & 0x40)  # CFGLCK
        return False

    def _write(self, page: int, data: bytes) -> bytes:
        if page < 2 or page >= PAGE_COUNT:
            return self._nak()
        if page >= self.auth0 and not self.authenticated:
            return self._nak()
        if self._locked(page):
            return self._nak()
        offset = page * 4
        if page == 2:
            # bytes 0..1 (BCC1, INT) are read-only; the lock bytes are one-time programmable
            self.memory[offset + 2] |= data[2]
            self.memory[offset + 3] |= data[3]
        elif page in (3, DYNAMIC_LOCK_PAGE):
            for i in range(4):  # OTP: bits can be set, never cleared
                self.memory[offset + i] |= data[i]
        else:
            self.memory[offset : offset + 4] = data
        self.save()
        return ACK

    def _pwd_auth(self, password: bytes) -> bytes:
        limit = self.access & 0x07
        if limit and self.failed_auths >= 1 << limit:
            return self._nak(NAK_AUTH_LIMIT)
        if password != self.page(PWD_PAGE):
            self.failed_auths += 1
            return self._nak()
        self.failed_auths = 0
        self.authenticated = True
        return self.page(PACK_PAGE)[0:2]


class PullMode(enum.Enum):
    """What happens to the command during which the card leaves the field."""

    #: the card is gone before the command reaches it: nothing happens
    BEFORE = "before"
    #: the command takes effect, the answer is lost (a write landed, its ACK did not)
    AFTER = "after"
    #: a WRITE lands half: the page holds neither the old nor the new bytes
    GARBLED = "garbled"


@dataclass
class FieldStats:
    """What crossed the virtual air gap: frames and payload bytes (not the hex on the wire)."""

    commands: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    by_command: Counter[str] = field(default_factory=Counter)

    def reset(self) -> None:
        """Start counting from zero (before the tap to measure)."""
        self.commands = self.bytes_in = self.bytes_out = 0
        self.by_command.clear()


_COMMAND_NAMES = {
    0x26: "REQA",
    0x52: "WUPA",
    0x30: "READ",
    0x3A: "FAST_READ",
    0xA2: "WRITE",
    0x60: "GET_VERSION",
    0x3C: "READ_SIG",
    0x39: "READ_CNT",
    0x1B: "PWD_AUTH",
    0x50: "HLTA",
}


def _command_name(frame: bytes) -> str:
    if frame[0] in (0x93, 0x95) and len(frame) > 1:
        level = 1 if frame[0] == 0x93 else 2
        return f"{'SELECT' if frame[1] == 0x70 else 'ANTICOLLISION'}_CL{level}"
    return _COMMAND_NAMES.get(frame[0], f"0x{frame[0]:02X}")


#: decides, for each command frame to a card in the field, whether the card leaves now
PullHook = Callable[[bytes], bool]


def pull_on_write(number: int) -> PullHook:
    """A hook that pulls the card at its ``number``-th WRITE command (1-based)."""
    seen = 0

    def hook(frame: bytes) -> bool:
        nonlocal seen
        if frame[:1] == b"\xa2":
            seen += 1
        return seen == number and frame[:1] == b"\xa2"

    return hook


def pull_after(commands: int) -> PullHook:
    """A hook that lets ``commands`` frames through and pulls the card at the next one."""
    seen = 0

    def hook(frame: bytes) -> bool:
        nonlocal seen
        seen += 1
        return seen > commands

    return hook


class VirtualField:
    """A virtual reader field on a UDP socket at 127.0.0.1: one card at a time, in a thread.

    Point nfcpy at it with ``udp:127.0.0.1:<port>``. ``put(card)`` places a card
    in the field, ``take()`` removes it; ``pull_when(hook)`` removes it during
    the command the hook picks, with :class:`PullMode` saying what that command does.
    """

    def __init__(self, card: VirtualNtag215 | None = None, *, port: int = 0) -> None:
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind((LOOPBACK, port))
        self._lock = threading.Lock()
        self._card = card
        self._hook: PullHook | None = None
        self._pull_mode = PullMode.BEFORE
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self.stats = FieldStats()
        #: the card most recently pulled by a hook (tests inspect what it holds)
        self.pulled: VirtualNtag215 | None = None

    @property
    def port(self) -> int:
        """The UDP port on 127.0.0.1 the field listens on."""
        port: int = self._socket.getsockname()[1]
        return port

    @property
    def card(self) -> VirtualNtag215 | None:
        """The card in the field, if any."""
        with self._lock:
            return self._card

    def put(self, card: VirtualNtag215) -> None:
        """Place ``card`` in the field (a tap); a card already there is taken out first."""
        with self._lock:
            if self._card is not None:
                self._card.power_off()
            card.power_off()
            self._card = card

    def take(self) -> VirtualNtag215 | None:
        """Remove the card from the field and return it."""
        with self._lock:
            card, self._card = self._card, None
            self._hook = None
            if card is not None:
                card.power_off()
            return card

    def pull_when(self, hook: PullHook, mode: PullMode = PullMode.BEFORE) -> None:
        """Pull the card out during the first command for which ``hook(frame)`` is true."""
        with self._lock:
            self._hook, self._pull_mode = hook, mode

    def start(self) -> VirtualField:
        """Answer the reader from a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._running.set()
            self._thread = threading.Thread(
                target=self._serve, name=f"virtual-field-{self.port}", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop answering and close the socket."""
        self._running.clear()
        if self._thread is not None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as wake:
                wake.sendto(b"STOP", (LOOPBACK, self.port))  # end the select at once
            self._thread.join()
            self._thread = None
        self._socket.close()

    def __enter__(self) -> VirtualField:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        while self._running.is_set():
            if not select.select([self._socket], [], [], 0.5)[0]:
                continue
            try:
                datagram, address = self._socket.recvfrom(2048)
                answer = self._answer(datagram)
                if answer is not None:
                    self._socket.sendto(b"106A " + hexlify(answer), address)
            except OSError:
                continue  # a reader that went away: the next datagram is another reader's

    def _answer(self, datagram: bytes) -> bytes | None:
        with self._lock:
            card = self._card
            if card is None:
                return None
            if datagram.startswith(b"RFOFF"):
                card.power_off()
                return None
            parts = datagram.split()
            if len(parts) != 2 or parts[0] != BITRATE:
                return None  # type B and FeliCa polls: an NTAG stays silent
            try:
                frame = unhexlify(parts[1])
            except ValueError:
                return None
            if not frame:
                return None
            self.stats.commands += 1
            self.stats.bytes_in += len(frame)
            self.stats.by_command[_command_name(frame)] += 1
            if card.state is CardState.ACTIVE and self._hook is not None and self._hook(frame):
                self._pull(card, frame)
                return None
            answer = card.handle(frame)
            if answer is not None:
                self.stats.bytes_out += len(answer)
            return answer

    def _pull(self, card: VirtualNtag215, frame: bytes) -> None:
        if self._pull_mode is PullMode.AFTER:
            card.handle(frame)
        elif self._pull_mode is PullMode.GARBLED and frame[0] == 0xA2 and len(frame) == 6:
            # half the new bytes landed, the rest is charge noise: neither old nor new
            garbled = frame[2:4] + bytes(b ^ 0x5A for b in frame[4:6])
            card.handle(frame[:2] + garbled)
        card.power_off()
        self.pulled, self._card, self._hook = card, None, None


def demo_cards(directory: Path, count: int = 10) -> list[VirtualNtag215]:
    """``count`` cards kept in ``directory`` (``card-0.ntag215`` ...), made on first use."""
    directory.mkdir(parents=True, exist_ok=True)
    return [
        VirtualNtag215.load(directory / f"card-{serial}.ntag215", uid=uid_for(serial))
        for serial in range(count)
    ]


def console_command(field: VirtualField, cards: list[VirtualNtag215], line: str) -> str:
    """Run one demo console command on ``field``; the answer is one line for the terminal.

    ``tap N`` puts card N in the field, ``take`` removes it, ``pull K`` tears the
    K-th WRITE of the next session, ``list`` shows the cards.
    """
    words = line.split()
    if not words:
        return ""
    if words[0] == "list":
        present = field.card
        return "; ".join(
            f"{'*' if card is present else ' '}{serial}: {card.uid.hex()}"
            for serial, card in enumerate(cards)
        )
    if words[0] == "take":
        card = field.take()
        return "field empty" if card is None else f"took {card.uid.hex()}"
    if words[0] in ("tap", "pull") and len(words) == 2 and words[1].isdigit():
        number = int(words[1])
        if words[0] == "pull":
            field.pull_when(pull_on_write(number))
            return f"the card leaves at WRITE #{number}"
        if number >= len(cards):
            return f"no card {number} (0..{len(cards) - 1})"
        field.put(cards[number])
        return f"card {number} ({cards[number].uid.hex()}) is in the field"
    return "commands: tap N | take | pull K | list"


def main(argv: list[str] | None = None) -> None:
    """Run a virtual kiosk field with ten demo cards; point nfcpy at ``udp:127.0.0.1:PORT``."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=54321, help="UDP port on 127.0.0.1")
    parser.add_argument("--cards", type=Path, default=Path("var/cards"), help="card files")
    parser.add_argument("--count", type=int, default=10)
    args = parser.parse_args(argv)
    cards = demo_cards(args.cards, args.count)
    with VirtualField(port=args.port) as field:
        print(f"virtual field on udp:127.0.0.1:{field.port}; {len(cards)} cards in {args.cards}")
        print(console_command(field, cards, "help"))
        try:
            for line in iter(input, "quit"):
                print(console_command(field, cards, line))
        except (EOFError, KeyboardInterrupt):
            pass


if __name__ == "__main__":
    main()
