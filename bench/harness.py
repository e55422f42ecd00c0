"""The benchmarks' rig: a private local Ray with the real Serve app, and a chat client.

``running_app`` starts Ray (loopback only, its own namespace) and the ``FleetIngress``
app on a free 127.0.0.1 port with the scripted LM of ``bench/rules.json``, and shuts
both down afterwards. ``ChatSocket`` speaks the chat WebSocket of PROTOCOL.md and times
what it asks for. Nothing here talks to any host but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from fleet_rlm.config import Settings, apply_offline_env
from fleet_rlm.identity import SessionKey

RULES = Path(__file__).with_name("rules.json")
TERMINAL = frozenset({"final", "error", "cancelled"})
READY_TIMEOUT_S = 120.0
FRAME_TIMEOUT_S = 60.0
# Auth is off, so every caller is this principal (fleet_rlm.api.auth.DEFAULT_PRINCIPAL).
WORKSPACE, USER = "default", "local"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_settings(data_dir: Path, namespace: str, idle_timeout_s: float) -> Settings:
    return Settings(
        app_env="local",
        auth_required=False,
        data_dir=data_dir,
        dspy_lm_scripted_rules=RULES,
        mlflow_enabled=False,
        mlflow_auto_start=False,
        session_idle_timeout_s=idle_timeout_s,
        agent_max_iters=8,
        ray_namespace=namespace,
    )


def actor_name(session_id: str) -> str:
    return SessionKey(WORKSPACE, USER, session_id).actor_name


@dataclass
class App:
    base_url: str
    settings: Settings
    startup_s: dict[str, float] = field(default_factory=dict)

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http", "ws", 1)

    def last_seq(self, session_id: str) -> int:
        answer = httpx.get(f"{self.base_url}/api/v1/sessions/{session_id}", timeout=10)
        answer.raise_for_status()
        return int(answer.json()["last_seq"])


@contextmanager
def running_app(settings: Settings) -> Iterator[App]:
    """Ray and the Serve app for the duration of the block; both are shut down after.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` when first imported, so the caller
    sets it (to 0: listeners on 127.0.0.1) before anything imports ``ray``.
    """
    apply_offline_env()
    import ray
    from ray import serve

    from fleet_rlm.serve import APP_NAME, FleetIngress

    started = time.monotonic()
    ray.init(
        namespace=settings.ray_namespace,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
    )
    try:
        ray_up = time.monotonic()
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(FleetIngress.bind(settings), name=APP_NAME, route_prefix="/", blocking=False)
        app = App(f"http://127.0.0.1:{port}", settings)
        _wait_ready(app.base_url)
        app.startup_s = {"ray.init": ray_up - started, "serve app ready": time.monotonic() - ray_up}
        yield app
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()


def _wait_ready(base_url: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the Serve app at {base_url} was not ready within {READY_TIMEOUT_S} s")


def open_viewer(app: App, session_id: str, after_seq: int) -> Any:
    query = httpx.QueryParams({"session_id": session_id, "after_seq": str(after_seq)})
    return connect(f"{app.ws_url}/api/v1/ws/execution/events?{query}", max_size=None)


@dataclass
class TurnTiming:
    """Seconds from sending ``message`` to ``turn_started`` and to the terminal event."""

    turn_index: int
    started_s: float
    final_s: float
    kind: str


class ChatSocket:
    """One ``/api/v1/ws/execution`` connection; its methods time a request and its answer."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    @classmethod
    def connect(cls, app: App) -> Any:
        return connect(f"{app.ws_url}/api/v1/ws/execution", max_size=None)

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def _recv(self) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), FRAME_TIMEOUT_S))

    async def ping(self) -> float:
        sent = time.perf_counter()
        await self._send({"type": "ping"})
        while (await self._recv()).get("type") != "pong":
            pass
        return time.perf_counter() - sent

    async def resume(self, session_id: str, after_seq: int = 0) -> None:
        """Watch ``session_id`` (which starts its actor) without sending a message."""
        await self._send({"type": "resume", "session_id": session_id, "after_seq": after_seq})

    async def turn(self, session_id: str, content: str) -> TurnTiming:
        """Send a message and read this session's frames up to its terminal event."""
        sent = time.perf_counter()
        await self._send({"type": "message", "session_id": session_id, "content": content})
        started: float | None = None
        while True:
            frame = await self._recv()
            if frame.get("type") == "error":
                raise RuntimeError(f"session {session_id}: the server refused: {frame}")
            data = frame.get("data", {})
            if frame.get("type") != "event" or data.get("session_id") != session_id:
                continue
            now = time.perf_counter() - sent
            if data["kind"] == "turn_started":
                started = now
            elif data["kind"] in TERMINAL:
                first = started if started is not None else now
                return TurnTiming(data["turn_index"], first, now, data["kind"])
