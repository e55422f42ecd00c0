"""A stand-in PostHog capture server on 127.0.0.1 that the real ``posthog`` client sends to.

It speaks what the SDK (7.91.1) sends in capture mode v0, found by reading
``posthog/request.py`` and ``posthog/consumer.py``:

    POST /batch/            analytics events
    POST /i/v0/ai/batch/    AI events sent with ``capture_ai`` (same body)

The body is JSON, gzip-compressed when the client has ``gzip=True`` (then
``Content-Encoding: gzip``): ``{"batch": [event, ...], "api_key", "sent_at",
"historical_migration"}``, each event ``{"event", "distinct_id", "properties",
"timestamp", "uuid"}``. The answer is 200 ``{"status": 1}``; a wrong ``api_key`` gets 401
with a ``detail``, as the SDK parses errors. Anything else (``/flags/``, ``/decide/``,
remote config) gets 404 and is kept in ``unexpected``, so a test can assert the product
never calls it.

Faults: ``hang()`` holds every request after reading its body, until ``release()``;
``entered`` is set when a held request arrives. ``stop()`` takes the server down.
"""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

BATCH_PATHS = frozenset({"/batch/", "/i/v0/ai/batch/"})
DEFAULT_API_KEY = "phc_standin_project_key"


@dataclass
class Received:
    """One POST as it arrived: its path, whether it was gzipped, and its decoded body."""

    path: str
    gzipped: bool
    text: str
    body: dict[str, Any] = field(default_factory=dict)

    @property
    def events(self) -> list[dict[str, Any]]:
        return list(self.body.get("batch") or [])


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class PosthogStandIn:
    def __init__(self, api_key: str = DEFAULT_API_KEY) -> None:
        self.api_key = api_key
        self.received: list[Received] = []  # every batch POST, held ones included
        self.unexpected: list[str] = []
        self.entered = threading.Event()
        self._accepted: dict[str, dict[str, Any]] = {}  # by uuid: the SDK may resend
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._release.set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> PosthogStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> PosthogStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- faults ------------------------------------------------------------------------

    def hang(self) -> None:
        self.entered.clear()
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    # --- what arrived ------------------------------------------------------------------

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        """Accepted events (answered 200), once each, in arrival order."""
        with self._lock:
            events = list(self._accepted.values())
        return [e for e in events if name is None or e.get("event") == name]

    def seen_text(self) -> str:
        """Every body received so far, held ones included, decoded."""
        with self._lock:
            return "\n".join(r.text for r in self.received)

    def wait_for(
        self,
        predicate: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """Poll the accepted events until ``predicate`` holds; return them either way."""
        deadline = time.monotonic() + timeout
        while True:
            events = self.events()
            if predicate(events) or time.monotonic() > deadline:
                return events
            time.sleep(0.1)

    # --- called by the handler ---------------------------------------------------------

    def _record(self, received: Received) -> None:
        with self._lock:
            self.received.append(received)

    def _accept(self, events: list[dict[str, Any]]) -> None:
        with self._lock:
            for event in events:
                self._accepted.setdefault(str(event.get("uuid")), event)

    def _hold(self) -> None:
        if not self._release.is_set():
            self.entered.set()
            self._release.wait()


def _handler(owner: PosthogStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            with owner._lock:
                owner.unexpected.append(f"{self.command} {self.path}")
            self._answer(404, {"detail": "not implemented by the stand-in"})

        def do_GET(self) -> None:
            self._refuse()

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in BATCH_PATHS:
                self._refuse()
                return
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            gzipped = self.headers.get("Content-Encoding", "").lower() == "gzip"
            try:
                text = (gzip.decompress(raw) if gzipped else raw).decode("utf-8")
                body = json.loads(text)
            except (OSError, ValueError) as exc:
                self._answer(400, {"detail": f"body is not (gzipped) JSON: {exc}"})
                return
            if not isinstance(body, dict) or not isinstance(body.get("batch"), list):
                self._answer(400, {"detail": "body needs a 'batch' list"})
                return
            received = Received(path=path, gzipped=gzipped, text=text, body=body)
            owner._record(received)
            owner._hold()
            if body.get("api_key") != owner.api_key:
                self._answer(401, {"type": "authentication_error", "detail": "invalid api key"})
                return
            owner._accept(received.events)
            self._answer(200, {"status": 1})

    return Handler
