"""A small test client for the HTTP routes and both WebSockets, with a token of its own."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from fleet_rlm.api.auth import issue_token
from fleet_rlm.config import Settings

TERMINAL = {"final", "error", "cancelled"}


def new_session(prefix: str = "s") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Client:
    def __init__(self, base_url: str, settings: Settings, user_id: str, workspace: str = "w1"):
        self.base_url = base_url
        self.ws_base = base_url.replace("http", "ws", 1)
        self.token = issue_token(settings, user_id, workspace)
        self.http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )

    def chat(self, **query: str) -> Any:
        return connect(self._url("/api/v1/ws/execution", query), max_size=None)

    def viewer(self, session_id: str, after_seq: int | None = None) -> Any:
        query = {"session_id": session_id}
        if after_seq is not None:
            query["after_seq"] = str(after_seq)
        return connect(self._url("/api/v1/ws/execution/events", query), max_size=None)

    def _url(self, path: str, query: dict[str, str]) -> str:
        params = httpx.QueryParams({"access_token": self.token, **query})
        return f"{self.ws_base}{path}?{params}"

    def attach(self, session_id: str, name: str, text: str) -> dict[str, Any]:
        answer = self.http.post(
            f"/api/v1/sessions/{session_id}/documents", json={"name": name, "text": text}
        )
        assert answer.status_code == 201, answer.text
        return answer.json()


async def send(ws: ClientConnection, frame: dict[str, Any]) -> None:
    await ws.send(json.dumps(frame))


async def recv(ws: ClientConnection, timeout: float = 30.0) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def until_terminal(ws: ClientConnection, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Chat frames up to and including the first terminal event."""
    frames: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - loop.time()))
        frames.append(frame)
        if frame.get("type") == "event" and frame["data"]["kind"] in TERMINAL:
            return frames


async def until_completed(ws: ClientConnection, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Execution frames up to and including the next ``execution_completed``."""
    frames: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = await recv(ws, max(0.1, deadline - loop.time()))
        frames.append(frame)
        if frame.get("type") in ("execution_completed", "error"):
            return frames


def kinds(frames: list[dict[str, Any]]) -> list[str]:
    return [f["data"]["kind"] for f in frames if f.get("type") == "event"]


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    out = []
    for f in frames:
        if f.get("type") == "event":
            out.append(f["data"]["seq"])
        elif "seq" in f:
            out.append(f["seq"])
    return out
