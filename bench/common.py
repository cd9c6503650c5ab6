"""What the benchmarks share: a free loopback port, percentiles, a gunicorn to measure."""

from __future__ import annotations

import http.client
import os
import secrets
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port free on loopback now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def start_gunicorn(
    url: str, port: int, workers: int, env_extra: dict[str, str]
) -> subprocess.Popen[bytes]:
    """gunicorn (sync workers) serving ``wsgi:app`` in production mode on 127.0.0.1:``port``."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "RANQI_ENV": "production",
        "SECRET_KEY": secrets.token_hex(16),
        "RANQI_LOG_LEVEL": "WARNING",
        "RANQI_INSTANCE_PATH": tempfile.mkdtemp(),
        **env_extra,
    }
    process = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/gunicorn"),
            "-w",
            str(workers),
            "-k",
            "sync",
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "wsgi:app",
        ],
        cwd=ROOT,
        env=env,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/info")
            if conn.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.3)
    process.terminate()
    raise SystemExit("gunicorn did not start")
