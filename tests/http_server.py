"""Serve a WSGI app on 127.0.0.1 in a thread, for tests that need a real HTTP peer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import make_server


@contextmanager
def serve(app: Any, port: int = 0) -> Iterator[str]:
    """Run ``app`` on loopback (a free port unless given); yield "http://127.0.0.1:PORT"."""
    server = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
