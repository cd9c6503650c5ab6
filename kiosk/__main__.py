"""``ranqi-kiosk``: the kiosk's command line (also ``python -m kiosk``).

    ranqi-kiosk run       serve taps on the configured reader until Ctrl-C
    ranqi-kiosk whoami    ask the server who this kiosk is (checks the credentials)

Configuration comes from ``RANQI_KIOSK_*`` environment variables (kiosk/config.py).
Other modules add subcommands without editing this file: a module named in
:data:`EXTENSION_MODULES` (or in ``RANQI_KIOSK_EXTENSIONS``, comma-separated) that
defines ``KIOSK_COMMANDS``, a dict of name → :class:`Command`, gets them listed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType

from kiosk.config import ConfigError, KioskConfig

log = logging.getLogger("kiosk")

#: modules that may add subcommands (skipped while they do not exist)
EXTENSION_MODULES = ("kiosk.ui", "kiosk.demo", "kiosk.receipt")


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, its arguments, and what it does (returns the exit code)."""

    help: str
    run: Callable[[argparse.Namespace, KioskConfig], int]
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None


def _run(args: argparse.Namespace, config: KioskConfig) -> int:
    """Serve taps until Ctrl-C (or SIGTERM), one log line per tap."""
    from kiosk.client import Kiosk, KioskClient

    config.require_credentials()
    client = KioskClient(
        config.server_url, config.client_id, config.client_secret, timeout=config.timeout
    )
    kiosk = Kiosk(
        client, config.reader_opener(), wait=config.card_wait, await_removal=not args.once
    )
    if args.once:
        outcome = kiosk.tap()
        print(outcome.log_line())
        return 0 if outcome.ok else 1
    stop = threading.Event()

    def stop_serving(signum: int, frame: FrameType | None) -> None:
        # nfcpy swallows KeyboardInterrupt while it polls: ask the loop to stop instead;
        # a second Ctrl-C interrupts at once
        log.info("stopping after this tap")
        stop.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, stop_serving)
    signal.signal(signal.SIGTERM, stop_serving)
    log.info(
        "kiosk %s serving taps on %s for %s", config.client_id, config.reader, config.server_url
    )
    try:
        kiosk.run(stop)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    log.info("stopped")
    return 0


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--once", action="store_true", help="serve one tap and exit")


def _whoami(args: argparse.Namespace, config: KioskConfig) -> int:
    """Print the server's record of this kiosk (GET /kiosk) as JSON."""
    from kiosk.client import KioskClient

    config.require_credentials()
    client = KioskClient(
        config.server_url, config.client_id, config.client_secret, timeout=config.timeout
    )
    try:
        print(json.dumps(client.whoami(), ensure_ascii=False, indent=2))
    finally:
        client.close()
    return 0


COMMANDS: dict[str, Command] = {
    "run": Command("serve taps on the configured reader until Ctrl-C", _run, _add_run_arguments),
    "whoami": Command("show this kiosk as the server knows it", _whoami),
}


def commands() -> dict[str, Command]:
    """This module's subcommands and those the extension modules define."""
    found = dict(COMMANDS)
    extra = [name for name in os.environ.get("RANQI_KIOSK_EXTENSIONS", "").split(",") if name]
    for module_name in (*EXTENSION_MODULES, *extra):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise  # the module exists but lacks something: say so
            continue
        for name, command in getattr(module, "KIOSK_COMMANDS", {}).items():
            found.setdefault(name, command)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, read the configuration, and run the subcommand."""
    from kiosk.client import KioskApiError

    available = commands()
    parser = argparse.ArgumentParser(prog="ranqi-kiosk", description="Ranqi gas card kiosk")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in available.items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help)
        if command.add_arguments is not None:
            command.add_arguments(sub_parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
    )
    try:
        config = KioskConfig.from_env()
        return available[args.command].run(args, config)
    except ConfigError as error:
        print(f"ranqi-kiosk: configuration: {error}", file=sys.stderr)
        return 2
    except KioskApiError as error:
        print(f"ranqi-kiosk: {error.message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
