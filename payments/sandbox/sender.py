"""Deliver the sandbox gateways' queued notifies, with each provider's retry schedule.

A daemon thread (``NotifySender``) polls the store; ``time_scale`` shrinks the
providers' waits (0.001 turns Alipay's 4 minutes into 0.24 s) for tests and demos.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable

from payments.sandbox.store import QueuedNotify, SandboxStore

log = logging.getLogger(__name__)

#: provider name → (retry waits in seconds, does this HTTP answer count as received?)
Rules = dict[str, tuple[list[float], Callable[[int, bytes], bool]]]
#: provider name → fresh headers for a body, for providers that sign each delivery anew
#: (WeChat Pay v3 signs with the time of sending; a stale retry would rightly be refused)
Resigners = dict[str, Callable[[bytes], dict[str, str]]]


def http_post(item: QueuedNotify, accepted: Callable[[int, bytes], bool]) -> tuple[bool, str]:
    """POST one notify as the provider would; (accepted, what the merchant answered)."""
    request = urllib.request.Request(  # noqa: S310 - sandbox posts to the configured notify URL
        item.url, data=item.body, headers=item.headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except OSError as error:
        return False, f"unreachable: {error}"
    return accepted(status, body), f"{status} {body[:100]!r}"


class NotifySender:
    """Background delivery of queued notifies until :meth:`stop`."""

    def __init__(
        self,
        store: SandboxStore,
        rules: Rules,
        *,
        time_scale: float = 1.0,
        interval: float = 0.5,
        resigners: Resigners | None = None,
    ) -> None:
        self.store = store
        self.rules = rules
        self.resigners = resigners or {}
        self.time_scale = time_scale
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def deliver_once(self) -> int:
        """Attempt every due notify once; returns how many were attempted."""
        schedules = {
            name: [wait * self.time_scale for wait in waits]
            for name, (waits, _accepted) in self.rules.items()
        }

        def post(item: QueuedNotify) -> tuple[bool, str]:
            _waits, accepted = self.rules[item.provider]
            resign = self.resigners.get(item.provider)
            if resign is not None:
                item = dataclasses.replace(item, headers=resign(item.body))
            ok, answer = http_post(item, accepted)
            log.info(
                "sandbox notify %s %s attempt %d: %s",
                item.provider,
                item.order_no,
                item.attempts + 1,
                answer,
            )
            return ok, answer

        return self.store.deliver_due(post, schedules)

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sandbox-notify", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.deliver_once()
            except Exception:  # keep delivering; the failure is in the log
                log.exception("sandbox notify delivery failed")
