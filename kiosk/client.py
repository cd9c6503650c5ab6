"""The kiosk's client of the server's kiosk API, and one tap for the screen.

:class:`KioskClient` speaks ``/kiosk/api/v1`` (docs/kiosk-api.md): an OAuth2
client-credentials token (HTTP Basic), cached and renewed before it expires and
once on a 401; ``sync`` and ``confirm`` as :class:`kiosk.reader.CardHost`. The
kiosk holds only its client credentials, no key that can create gas.

Every failure is one of :class:`KioskApiError`'s subclasses, so a caller tells
"server unreachable" (nothing is written: the sync comes before any write),
"card refused" (the server's code), "card busy" (``Retry-After``) and "an answer
this kiosk does not understand" apart. A sync or confirm is never retried after
a timeout: the server settles an unconfirmed write from the card at its next
sync, so the next tap is the retry.

:class:`Kiosk` runs one tap (:meth:`Kiosk.tap`) and returns a :class:`TapOutcome`
with what the touch screen shows, or an error in plain words.
"""

from __future__ import annotations

import base64
import binascii
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from cardfmt import IMAGE_SIZE
from kiosk.reader import ReaderLoop, TapResult, TapStatus, WriteOrder

log = logging.getLogger(__name__)

API_PREFIX = "/kiosk/api/v1"
#: seconds to open a TCP connection (the read timeout is the client's ``timeout``)
CONNECT_TIMEOUT = 3.05
#: renew a token this long before it expires (at most a quarter of its life)
RENEW_MARGIN = 30.0


class KioskApiError(Exception):
    """The server did not do what the kiosk asked; ``message`` is for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerUnreachable(KioskApiError):
    """No answer from the server (refused, timed out, DNS, TLS, or a 5xx from a proxy)."""


class NotAuthorized(KioskApiError):
    """The server refused the kiosk's credentials or token (disabled kiosk, wrong secret)."""


class CardRefused(KioskApiError):
    """The server refused the card or the write, with its reason code (docs/kiosk-api.md)."""

    def __init__(
        self, message: str, *, code: str, status: int, detail: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code, self.status = code, status
        self.detail = detail or {}


class CardBusy(CardRefused):
    """Another kiosk is writing this card: try again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float, detail: dict[str, Any] | None) -> None:
        super().__init__(message, code="card_busy", status=409, detail=detail)
        self.retry_after = retry_after


class BadAnswer(KioskApiError):
    """The server answered something this kiosk cannot understand (wrong version, a proxy page)."""


@dataclass(frozen=True)
class CardSummary:
    """The card and meter as the server knows them after a sync."""

    account_no: str
    meter_no: str
    card_no: str
    #: 购气次数 last confirmed on the card
    purchase_count: int
    #: gas the card carries under that count, 0.01 m³
    pending_volume: int
    #: the meter has taken what the card carries
    pending_applied: bool
    #: the meter's applied count and remaining gas from its last report (None: no report yet)
    meter_applied_count: int
    meter_remaining: int | None
    meter_reported_at: str | None


@dataclass(frozen=True)
class SyncAnswer:
    """The server's answer to ``POST /sync``."""

    summary: CardSummary
    #: the write to make, or None when the card is up to date
    order: WriteOrder | None
    #: gas this write adds to the card, 0.01 m³
    loading: int
    #: gas this tap's meter report moved to applied, 0.01 m³
    applied_volume: int
    alarms_opened: list[str]
    completed_write_id: str | None
    abandoned_write_id: str | None


@dataclass(frozen=True)
class ConfirmAnswer:
    """The server's answer to ``POST /confirm``: the gas is loaded."""

    write_id: str
    loaded: int
    purchase_count: int
    pending_volume: int


class KioskClient:
    """HTTP client of the kiosk API; thread-safe (the token is shared, requests are not)."""

    def __init__(
        self,
        server_url: str,
        client_id: str,
        client_secret: str,
        *,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.base = server_url.rstrip("/") + API_PREFIX
        self._credentials = (client_id, client_secret)
        self.timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0
        self._local = threading.local()
        #: tokens fetched so far (tests and the log)
        self.tokens_fetched = 0

    # -- transport -----------------------------------------------------------------------

    def _session(self) -> Any:
        # one keep-alive session per thread: requests.Session is not thread-safe
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def close(self) -> None:
        """Close this thread's connections."""
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            return self._session().request(
                method,
                self.base + path,
                timeout=(CONNECT_TIMEOUT, self.timeout),
                allow_redirects=False,
                **kwargs,
            )
        except requests.Timeout as error:
            raise ServerUnreachable(f"the server did not answer within {self.timeout} s") from error
        except requests.RequestException as error:
            raise ServerUnreachable(f"the server cannot be reached ({type(error).__name__})") from (
                error
            )

    def token(self) -> str:
        """A valid access token: the cached one, or a new one when it is about to expire."""
        with self._lock:
            if self._token is None or self._clock() >= self._expires:
                self._fetch_token()
            assert self._token is not None
            return self._token

    def _fetch_token(self) -> None:
        started = self._clock()
        response = self._send(
            "POST", "/token", data={"grant_type": "client_credentials"}, auth=self._credentials
        )
        if response.status_code in (400, 401):
            raise NotAuthorized(
                f"the server refused this kiosk's credentials ({_oauth_error(response)})"
            )
        body = _json(response)
        token, expires_in = body.get("access_token"), body.get("expires_in")
        if not isinstance(token, str) or not token or not _is_int(expires_in):
            raise BadAnswer(f"the token endpoint answered {response.status_code} without a token")
        assert isinstance(expires_in, int)
        if expires_in <= 0:
            raise BadAnswer(f"the token endpoint answered {response.status_code} without a token")
        self._token = token
        self._expires = started + expires_in - min(RENEW_MARGIN, expires_in / 4)
        self.tokens_fetched += 1

    def _forget_token(self, token: str) -> None:
        with self._lock:
            if self._token == token:
                self._token = None

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """An authorised API call; a 401 gets one new token and one retry (nothing was done)."""
        for attempt in (1, 2):
            token = self.token()
            response = self._send(
                method, path, json=body, headers={"Authorization": f"Bearer {token}"}
            )
            if response.status_code != 401:
                return response
            self._forget_token(token)
            if attempt == 2:
                raise NotAuthorized(
                    f"the server refused a fresh token ({_oauth_error(response)}): "
                    "is this kiosk disabled?"
                )
        raise AssertionError("unreachable")

    # -- the API ---------------------------------------------------------------------------

    def whoami(self) -> dict[str, Any]:
        """``GET /kiosk``: this kiosk's name, place and opening hours as the server has them."""
        response = self._call("GET", "/kiosk")
        _raise_for_error(response)
        body = _json(response)
        if not isinstance(body.get("client_id"), str):
            raise BadAnswer("GET /kiosk answered without a client_id")
        return body

    def sync_card(self, uid: bytes, image: bytes) -> SyncAnswer:
        """``POST /sync`` with the card's UID and image: its state, and a write if gas awaits."""
        response = self._call("POST", "/sync", {"card_uid": uid.hex(), "image": _b64(image)})
        _raise_for_error(response)
        return _parse_sync(_json(response))

    def confirm_write(self, write_id: str, image: bytes) -> ConfirmAnswer:
        """``POST /confirm`` with the read-back: the gas is loaded (or a :class:`CardRefused`)."""
        response = self._call("POST", "/confirm", {"write_id": write_id, "image": _b64(image)})
        _raise_for_error(response)
        return _parse_confirm(_json(response), write_id)

    # -- CardHost ----------------------------------------------------------------------------

    def sync(self, uid: bytes, image: bytes) -> WriteOrder | None:
        """:class:`kiosk.reader.CardHost`: the write order of a sync, if any."""
        return self.sync_card(uid, image).order

    def confirm(self, write_id: str, image: bytes) -> None:
        """:class:`kiosk.reader.CardHost`: confirm the write; raises if the server refuses."""
        self.confirm_write(write_id, image)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _json(response: Any) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        if response.status_code >= 500:
            raise ServerUnreachable(f"the server is unavailable (HTTP {response.status_code})")
        raise BadAnswer(f"the server answered HTTP {response.status_code} without a JSON object")
    return body


def _oauth_error(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return f"HTTP {response.status_code}"


def _raise_for_error(response: Any) -> None:
    """Turn the API's error body into the matching exception; 200 passes."""
    if response.status_code == 200:
        return
    body = _json(response)  # a proxy's 502 page is "unreachable", any other non-JSON is bad
    error = body.get("error")
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        raise BadAnswer(f"the server answered HTTP {response.status_code} without an error code")
    code, message = error["code"], str(error.get("message", ""))
    detail = error.get("detail") if isinstance(error.get("detail"), dict) else None
    if response.status_code >= 500:
        raise ServerUnreachable(f"the server cannot load cards now ({code}: {message})")
    if code == "card_busy":
        raise CardBusy(message, retry_after=_retry_after(response), detail=detail)
    raise CardRefused(message, code=code, status=response.status_code, detail=detail)


def _retry_after(response: Any) -> float:
    try:
        return max(0.0, float(response.headers.get("Retry-After", "2")))
    except ValueError:
        return 2.0


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadAnswer(f"the server's answer has no usable {name!r}")
    return value


def _volume(body: dict[str, Any], name: str) -> int:
    value = _field(body, name, int)
    if isinstance(value, bool) or value < 0:
        raise BadAnswer(f"the server's answer has no usable {name!r}")
    return int(value)


def _parse_sync(body: dict[str, Any]) -> SyncAnswer:
    card = _field(body, "card", dict)
    meter = _field(body, "meter", dict)
    remaining = meter.get("remaining")
    reported_at = meter.get("reported_at")
    if remaining is not None and not _is_int(remaining):
        raise BadAnswer("the server's answer has no usable 'meter.remaining'")
    summary = CardSummary(
        account_no=_field(body, "account_no", str),
        meter_no=_field(body, "meter_no", str),
        card_no=_field(body, "card_no", str),
        purchase_count=_volume(card, "purchase_count"),
        pending_volume=_volume(card, "pending_volume"),
        pending_applied=_field(card, "pending_applied", bool),
        meter_applied_count=_volume(meter, "applied_count"),
        meter_remaining=remaining,
        meter_reported_at=reported_at if isinstance(reported_at, str) else None,
    )
    status = body.get("status")
    order: WriteOrder | None = None
    if status == "write":
        try:
            target = base64.b64decode(_field(body, "image", str), validate=True)
            password = bytes.fromhex(_field(body, "tag_password", str))
        except (binascii.Error, ValueError):
            raise BadAnswer("the server's write order has an undecodable image or password") from (
                None
            )
        if len(target) != IMAGE_SIZE or len(password) != 6:
            raise BadAnswer("the server's write order has an image or password of the wrong size")
        order = WriteOrder(_field(body, "write_id", str), target, password)
    elif status != "up_to_date":
        raise BadAnswer(f"the server's sync status {status!r} is not one this kiosk knows")
    alarms = body.get("alarms_opened", [])
    if not isinstance(alarms, list) or not all(isinstance(a, str) for a in alarms):
        raise BadAnswer("the server's answer has no usable 'alarms_opened'")
    completed, abandoned = body.get("completed_write_id"), body.get("abandoned_write_id")
    return SyncAnswer(
        summary=summary,
        order=order,
        loading=_volume(body, "loading"),
        applied_volume=_volume(body, "applied_volume"),
        alarms_opened=list(alarms),
        completed_write_id=completed if isinstance(completed, str) else None,
        abandoned_write_id=abandoned if isinstance(abandoned, str) else None,
    )


def _parse_confirm(body: dict[str, Any], write_id: str) -> ConfirmAnswer:
    if body.get("status") != "confirmed" or body.get("write_id") != write_id:
        raise BadAnswer("the server's confirm answer is not a confirmation of this write")
    return ConfirmAnswer(
        write_id=write_id,
        loaded=_volume(body, "loaded"),
        purchase_count=_volume(body, "purchase_count"),
        pending_volume=_volume(body, "pending_volume"),
    )


# -- one tap, for the screen ------------------------------------------------------------------


class Outcome(enum.StrEnum):
    """How a tap ended, as the screen tells it."""

    NO_CARD = "no_card"
    #: read and synced: nothing to load (the meter's report, if any, was delivered)
    UP_TO_DATE = "up_to_date"
    #: gas written, read back and confirmed
    LOADED = "loaded"
    #: written and read back, but the confirm did not get through: the next tap finishes it
    UNCONFIRMED = "unconfirmed"
    #: the card left the field or could not be read or written: nothing confirmed
    CARD_FAILED = "card_failed"
    #: the server refused the card (``code`` says why)
    REFUSED = "refused"
    #: another kiosk is loading this card
    BUSY = "busy"
    #: the server cannot be reached: nothing was written
    OFFLINE = "offline"
    #: the kiosk's credentials were refused, or an answer it cannot understand
    OUT_OF_SERVICE = "out_of_service"


#: the server's refusal codes in the resident's words
PLAIN_WORDS: dict[str, str] = {
    "card_unreadable": "This card cannot be read as a gas card. Please ask the gas company.",
    "card_refused": "This card is not accepted. Please ask the gas company.",
    "card_mismatch": "This card does not match its meter's records. Please ask the gas company.",
    "tag_uid_mismatch": "This card is not the one registered. Please ask the gas company.",
    "card_lost": "This card was reported lost and cannot be used.",
    "card_replaced": "This card was replaced by a new one and cannot be used.",
    "card_blacklisted": "This card is blocked. Please ask the gas company.",
    "unknown_card": "This card is not known to the gas company.",
    "card_out_of_sync": "This card's state needs checking by the gas company.",
    "card_state_unknown": "This card's state needs checking by the gas company.",
    "readback_mismatch": "The card did not take the gas cleanly. Please tap it again.",
    "write_abandoned": "Please tap the card again to finish loading.",
    "unknown_write": "Please tap the card again to finish loading.",
}


@dataclass(frozen=True)
class TapOutcome:
    """What one tap did, for the touch screen, the receipt and the log."""

    outcome: Outcome
    #: the tag's UID in hex ("" without a card)
    uid: str = ""
    account_no: str = ""
    meter_no: str = ""
    card_no: str = ""
    #: gas put on the card by this tap, 0.01 m³
    loaded: int = 0
    #: 购气次数 on the card after this tap
    purchase_count: int = 0
    #: gas on the card the meter has not taken yet, 0.01 m³
    pending_on_card: int = 0
    #: the meter's last report: applied count, remaining gas (None: no report yet), when
    meter_applied_count: int = 0
    meter_remaining: int | None = None
    meter_reported_at: str | None = None
    #: gas this tap's report moved to applied, and alarms it opened
    applied_volume: int = 0
    alarms_opened: list[str] = field(default_factory=list)
    pages_written: int = 0
    #: the server's refusal code, if any
    code: str = ""
    retry_after: float | None = None
    #: what to tell the resident, in plain words
    message: str = ""

    @property
    def ok(self) -> bool:
        """The tap did what the resident came for (or there was nothing to do)."""
        return self.outcome in (Outcome.LOADED, Outcome.UP_TO_DATE)

    def log_line(self) -> str:
        """One line for the kiosk's log."""
        parts = [f"tap {self.outcome.value}"]
        if self.uid:
            parts.append(f"uid={self.uid}")
        if self.card_no:
            parts += [
                f"card={self.card_no}",
                f"account={self.account_no}",
                f"meter={self.meter_no}",
            ]
        if self.loaded:
            parts.append(f"loaded={self.loaded} pages={self.pages_written}")
        if self.card_no:
            parts.append(f"N={self.purchase_count} pending={self.pending_on_card}")
        if self.applied_volume:
            parts.append(f"applied={self.applied_volume}")
        if self.alarms_opened:
            parts.append(f"alarms={','.join(self.alarms_opened)}")
        if self.code:
            parts.append(f"code={self.code}")
        if not self.ok and self.message:
            parts.append(repr(self.message))
        return " ".join(parts)


class _TapHost:
    """The CardHost of one tap: the client's sync and confirm, with their answers kept."""

    def __init__(self, client: KioskClient) -> None:
        self.client = client
        self.synced: SyncAnswer | None = None
        self.confirmed: ConfirmAnswer | None = None
        self.confirm_error: KioskApiError | None = None

    def sync(self, uid: bytes, image: bytes) -> WriteOrder | None:
        self.synced = self.client.sync_card(uid, image)
        return self.synced.order

    def confirm(self, write_id: str, image: bytes) -> None:
        try:
            self.confirmed = self.client.confirm_write(write_id, image)
        except KioskApiError as error:
            # the card holds the target: the next sync completes the write from it
            self.confirm_error = error


class _ServingLoop(ReaderLoop):
    """The reader loop, telling ``served`` how the tap went before it waits for the card to go."""

    served: Callable[[TapResult], None] | None = None

    def _serve(self, tag: Any) -> TapResult:
        result = super()._serve(tag)
        if self.served is not None:
            self.served(result)
        return result


class Kiosk:
    """A kiosk's reader and server together: :meth:`tap` serves one card, :meth:`run` many."""

    def __init__(
        self,
        client: KioskClient,
        open_frontend: Callable[[], Any],
        *,
        wait: float = 3.0,
        await_removal: bool = False,
    ) -> None:
        self.client = client
        self._host = _TapHost(client)
        self.loop = _ServingLoop(open_frontend, self._host, wait=wait, await_removal=await_removal)
        self._tap_lock = threading.Lock()

    def tap(self, on_outcome: Callable[[TapOutcome], None] | None = None) -> TapOutcome:
        """Wait for a card and serve it once: read, sync, write, read back, confirm.

        ``on_outcome`` hears the outcome as soon as it is known: with ``await_removal``
        the call itself returns only when the card has left the reader.
        """
        with self._tap_lock:
            host = self._host = _TapHost(self.client)
            self.loop.host = host
            known: list[TapOutcome] = []

            def served(result: TapResult) -> None:
                known.append(_result_outcome(host, result))
                if on_outcome is not None:
                    on_outcome(known[0])

            self.loop.served = served
            try:
                result = self.loop.run_once()
            except KioskApiError as error:
                outcome = _error_outcome(error)
                if on_outcome is not None:
                    on_outcome(outcome)
                return outcome
            if known:
                return known[0]
            outcome = _result_outcome(host, result)
            if on_outcome is not None:
                on_outcome(outcome)
            return outcome

    def run(self, stop: threading.Event, *, log_line: Callable[[str], None] = log.info) -> None:
        """Serve taps until ``stop`` is set, one log line per card (none for an empty field)."""
        self.loop.stopping = stop

        def log_tap(outcome: TapOutcome) -> None:
            if outcome.outcome is not Outcome.NO_CARD:
                log_line(outcome.log_line())

        while not stop.is_set():
            try:
                outcome = self.tap(on_outcome=log_tap)
            except Exception:
                # an unforeseen reader error costs this tap, not the kiosk
                log.exception("tap failed")
                stop.wait(1.0)
                continue
            if outcome.outcome is Outcome.BUSY and outcome.retry_after:
                stop.wait(min(outcome.retry_after, 5.0))


def _error_outcome(error: KioskApiError) -> TapOutcome:
    """The screen's outcome of a tap the server refused or never answered (nothing written)."""
    if isinstance(error, CardBusy):
        return TapOutcome(
            Outcome.BUSY,
            code=error.code,
            retry_after=error.retry_after,
            message="This card is being loaded at another kiosk. "
            f"Please try again in {max(1, round(error.retry_after))} s.",
        )
    if isinstance(error, CardRefused):
        return TapOutcome(
            Outcome.REFUSED,
            code=error.code,
            message=PLAIN_WORDS.get(error.code, "This card cannot be served here."),
        )
    if isinstance(error, ServerUnreachable):
        log.warning("server unreachable: %s", error.message)
        return TapOutcome(
            Outcome.OFFLINE,
            message="The gas company's server cannot be reached. Nothing was written "
            "to your card; please try again later.",
        )
    log.error("kiosk out of service: %s", error.message)
    return TapOutcome(
        Outcome.OUT_OF_SERVICE,
        message="This kiosk is out of service. Nothing was written to your card.",
    )


def _result_outcome(host: _TapHost, result: TapResult) -> TapOutcome:
    uid = result.uid.hex() if result.uid else ""
    if result.status is TapStatus.NO_CARD:
        return TapOutcome(Outcome.NO_CARD)
    if result.status is TapStatus.FAILED and host.synced is None:
        return TapOutcome(
            Outcome.CARD_FAILED,
            uid=uid,
            message="The card could not be read. Please hold it still on the reader.",
        )
    return _outcome(host, result.status, uid, result.pages_written)


def _outcome(host: _TapHost, status: TapStatus, uid: str, pages: int) -> TapOutcome:
    synced = host.synced
    assert synced is not None
    card = synced.summary
    common: dict[str, Any] = {
        "uid": uid,
        "account_no": card.account_no,
        "meter_no": card.meter_no,
        "card_no": card.card_no,
        "meter_applied_count": card.meter_applied_count,
        "meter_remaining": card.meter_remaining,
        "meter_reported_at": card.meter_reported_at,
        "applied_volume": synced.applied_volume,
        "alarms_opened": synced.alarms_opened,
    }
    # what the card carried when read (what the server last confirmed on it)
    before_pending = 0 if card.pending_applied else card.pending_volume
    if status is TapStatus.SYNCED:
        return TapOutcome(
            Outcome.UP_TO_DATE,
            purchase_count=card.purchase_count,
            pending_on_card=before_pending,
            message="Your card is up to date.",
            **common,
        )
    order = synced.order
    if status is TapStatus.FAILED:
        return TapOutcome(
            Outcome.CARD_FAILED,
            purchase_count=card.purchase_count,
            pending_on_card=before_pending,
            message="The gas could not be written to the card. Nothing is lost: "
            "please tap it again and hold it still.",
            **common,
        )
    assert order is not None
    if host.confirmed is not None:
        return TapOutcome(
            Outcome.LOADED,
            loaded=host.confirmed.loaded,
            purchase_count=host.confirmed.purchase_count,
            pending_on_card=host.confirmed.pending_volume,
            pages_written=pages,
            message=f"{_m3(host.confirmed.loaded)} m³ loaded. Insert the card into your meter.",
            **common,
        )
    error = host.confirm_error
    code = error.code if isinstance(error, CardRefused) else ""
    return TapOutcome(
        Outcome.UNCONFIRMED,
        purchase_count=card.purchase_count,
        pending_on_card=before_pending,
        pages_written=pages,
        code=code,
        message="The gas is on your card, but the server has not confirmed it yet. "
        "Please tap the card again before using it.",
        **common,
    )


def _m3(volume: int) -> str:
    """0.01 m³ units as m³ with two decimals, without floats."""
    return f"{volume // 100}.{volume % 100:02d}"
