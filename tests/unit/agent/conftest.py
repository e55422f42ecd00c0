"""Fixtures for the agent's LM tests: offline environment, rules files, local stand-in servers."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleet_rlm.config import apply_offline_env

apply_offline_env()

WriteRules = Callable[..., Path]

_MODEL_SETTINGS = (
    "DSPY_LM_MODEL",
    "DSPY_DELEGATE_LM_MODEL",
    "DSPY_DELEGATE_LM_SMALL_MODEL",
    "DSPY_LM_API_BASE",
    "DSPY_LM_API_KEY",
    "DSPY_LM_SCRIPTED_RULES",
    "LM_TIMEOUT_S",
    "LOCAL_MODEL_PORT",
    "LOCAL_MODEL_CTX",
    "LOCAL_MODEL_MAX_TOKENS",
    "EMBEDDED_MODEL",
)


@pytest.fixture(autouse=True)
def _no_model_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test states its model settings; none leak in from the shell."""
    for name in _MODEL_SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def write_rules(tmp_path: Path) -> WriteRules:
    """Write a scripted-LM rules file; ``write_rules(rules, default=None, name="rules")``."""

    def write(
        rules: list[dict[str, Any]], default: dict[str, Any] | None = None, name: str = "rules"
    ) -> Path:
        path = tmp_path / f"{name}.json"
        body: dict[str, Any] = {"rules": rules}
        if default is not None:
            body["default"] = default
        path.write_text(json.dumps(body), encoding="utf-8")
        return path

    return write


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        code = 200 if self.path == "/health" else 404
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"status":"ok"}')

    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture
def health_server() -> Iterator[int]:
    """A stand-in that answers ``GET /health`` on 127.0.0.1; yields its port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A server on 127.0.0.1 that accepts connections and never answers; yields its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        stop.set()
        thread.join(timeout=1)
        for conn in accepted:
            conn.close()
        listener.close()
