"""Session actors passivate and come back; a killed actor leaves the session usable."""

from __future__ import annotations

import asyncio

import pytest
import ray

from fleet_rlm.config import Settings
from fleet_rlm.identity import SessionKey
from tests.integration.wsclient import Client, kinds, new_session, recv, send, seqs, until_terminal

pytestmark = pytest.mark.integration


def _actor(settings: Settings, sid: str, user: str = "alice"):
    name = SessionKey("w1", user, sid).actor_name
    try:
        return ray.get_actor(name, namespace=settings.ray_namespace)
    except ValueError:
        return None


async def _gone(settings: Settings, sid: str, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if _actor(settings, sid) is None:
            return True
        await asyncio.sleep(0.5)
    return False


async def test_passivated_session_comes_back_with_history(
    client: Client, settings: Settings
) -> None:
    sid = new_session("passive")
    client.attach(sid, "notes", "remember me\n")
    async with client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": "first"})
        first = await until_terminal(ws)
    assert await _gone(settings, sid, timeout=settings.session_idle_timeout_s + 20), (
        "the idle actor did not passivate"
    )
    async with client.chat() as ws:
        await send(ws, {"type": "resume", "session_id": sid, "after_seq": 0})
        replay = await until_terminal(ws)
        assert replay == first
        await send(ws, {"type": "message", "session_id": sid, "content": "second"})
        second = await until_terminal(ws)
    assert kinds(second)[-1] == "final"
    assert seqs(second)[0] > seqs(first)[-1]
    detail = client.http.get(f"/api/v1/sessions/{sid}").json()
    assert [t["turn_index"] for t in detail["turns"]] == [1, 2]


async def test_killed_actor_mid_turn_leaves_session_usable(
    client: Client, settings: Settings
) -> None:
    sid = new_session("killed")
    client.attach(sid, "notes", "abc\n")
    async with client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": "SLOW_FOREVER"})
        assert (await recv(ws))["data"]["kind"] == "turn_started"
        actor = _actor(settings, sid)
        assert actor is not None
        ray.kill(actor, no_restart=True)
        lost = await until_terminal(ws, timeout=30)
        assert kinds(lost)[-1] == "error"
        assert lost[-1]["data"]["payload"]["code"] == "turn_lost"
        await send(ws, {"type": "message", "session_id": sid, "content": "again"})
        again = await until_terminal(ws)
        assert kinds(again)[-1] == "final"
    async with client.viewer(sid, after_seq=0) as viewer:
        frames = []
        while len([f for f in frames if f["type"] == "execution_completed"]) < 2:
            frames.append(await recv(viewer))
    async with client.chat() as ws:
        await send(ws, {"type": "resume", "session_id": sid, "after_seq": 0})
        chat = await until_terminal(ws)
        chat += await until_terminal(ws)
    every = sorted(seqs(frames) + seqs(chat))
    assert every == list(range(1, len(every) + 1)), "seq has a gap or a duplicate"
    statuses = [t["status"] for t in client.http.get(f"/api/v1/sessions/{sid}").json()["turns"]]
    assert statuses == ["error", "completed"]
