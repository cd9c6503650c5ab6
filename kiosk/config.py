"""The kiosk's configuration, read from environment variables (each with a default).

* ``RANQI_KIOSK_SERVER_URL``: the Ranqi server, default ``http://127.0.0.1:5000``
  (the API is under ``/kiosk/api/v1``).
* ``RANQI_KIOSK_CLIENT_ID``: the kiosk's OAuth2 client id (``ranqi kiosks add``); no default.
* ``RANQI_KIOSK_CLIENT_SECRET``: its client secret; no default.
* ``RANQI_KIOSK_CLIENT_SECRET_FILE``: or a file holding the secret (wins over the variable).
* ``RANQI_KIOSK_READER``: nfcpy reader path, default ``usb`` (also ``usb:054c:06c1``,
  or ``udp:127.0.0.1:54321`` for virtual cards, loopback only).
* ``RANQI_KIOSK_TIMEOUT``: seconds to wait for the server's answer, default 10.
* ``RANQI_KIOSK_CARD_WAIT``: seconds one reader session waits for a card, default 3.
* ``RANQI_KIOSK_UI_HOST`` / ``RANQI_KIOSK_UI_PORT``: where the local touch UI listens,
  default ``127.0.0.1`` / 8088.
* ``RANQI_KIOSK_PRINTER``: the receipt printer for ``kiosk.receipt``; empty (default): none.

The kiosk holds only its client credentials: no key that can create gas.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SERVER_URL = "http://127.0.0.1:5000"
DEFAULT_READER = "usb"
DEFAULT_TIMEOUT = 10.0
DEFAULT_CARD_WAIT = 3.0
DEFAULT_UI_HOST = "127.0.0.1"
DEFAULT_UI_PORT = 8088


class ConfigError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class KioskConfig:
    """Everything a kiosk needs to know to serve taps."""

    server_url: str = DEFAULT_SERVER_URL
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    reader: str = DEFAULT_READER
    timeout: float = DEFAULT_TIMEOUT
    card_wait: float = DEFAULT_CARD_WAIT
    ui_host: str = DEFAULT_UI_HOST
    ui_port: int = DEFAULT_UI_PORT
    printer: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KioskConfig:
        """Read the ``RANQI_KIOSK_*`` variables; malformed numbers raise :class:`ConfigError`."""
        env = os.environ if environ is None else environ
        secret = env.get("RANQI_KIOSK_CLIENT_SECRET", "")
        secret_file = env.get("RANQI_KIOSK_CLIENT_SECRET_FILE", "")
        if secret_file:
            try:
                secret = Path(secret_file).read_text().strip()
            except OSError as error:
                raise ConfigError(f"RANQI_KIOSK_CLIENT_SECRET_FILE: {error}") from None
        return cls(
            server_url=env.get("RANQI_KIOSK_SERVER_URL", DEFAULT_SERVER_URL).rstrip("/"),
            client_id=env.get("RANQI_KIOSK_CLIENT_ID", ""),
            client_secret=secret,
            reader=env.get("RANQI_KIOSK_READER", DEFAULT_READER),
            timeout=_number(env, "RANQI_KIOSK_TIMEOUT", DEFAULT_TIMEOUT),
            card_wait=_number(env, "RANQI_KIOSK_CARD_WAIT", DEFAULT_CARD_WAIT),
            ui_host=env.get("RANQI_KIOSK_UI_HOST", DEFAULT_UI_HOST),
            ui_port=int(_number(env, "RANQI_KIOSK_UI_PORT", DEFAULT_UI_PORT)),
            printer=env.get("RANQI_KIOSK_PRINTER", ""),
        )

    def require_credentials(self) -> None:
        """Refuse to talk to the server without a client id and secret."""
        if not self.client_id or not self.client_secret:
            raise ConfigError(
                "set RANQI_KIOSK_CLIENT_ID and RANQI_KIOSK_CLIENT_SECRET "
                "(or RANQI_KIOSK_CLIENT_SECRET_FILE): `ranqi kiosks add` prints them"
            )

    def reader_opener(self) -> Callable[[], Any]:
        """A function that opens the configured nfcpy reader (one call per tap)."""
        return reader_opener(self.reader)


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(name, "")
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {value!r}") from None
    if number <= 0:
        raise ConfigError(f"{name} must be positive, not {value!r}")
    return number


def reader_opener(path: str) -> Callable[[], Any]:
    """Open ``path`` with nfcpy; ``udp:HOST:PORT`` goes through the loopback-bound driver."""
    # imported here: `ranqi-kiosk whoami` and the configuration need no nfcpy
    from kiosk.cardio import open_reader

    if path.startswith("udp"):
        _, host, port = [*path.split(":"), "", ""][:3]
        host = host or "127.0.0.1"
        if not port.isdigit():
            raise ConfigError("RANQI_KIOSK_READER: udp needs a port, as udp:127.0.0.1:54321")
        address = socket.gethostbyname(host)
        if not ipaddress.ip_address(address).is_loopback:
            # nfcpy's udp reader would take datagrams from the whole network
            raise ConfigError(
                f"RANQI_KIOSK_READER: the udp reader is for loopback only, not {host}"
            )
        return lambda: open_reader(int(port), host)

    def open_device() -> Any:
        import nfc  # type: ignore[import-untyped]

        clf = nfc.ContactlessFrontend()
        if not clf.open(path):
            raise OSError(f"no NFC reader at {path!r}")
        return clf

    return open_device
