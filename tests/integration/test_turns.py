"""Turns over the real Serve app: terminal events, viewers, resume, concurrency, cancel."""

from __future__ import annotations

import asyncio

import pytest

from tests.integration.wsclient import (
    Client,
    kinds,
    new_session,
    recv,
    send,
    seqs,
    until_completed,
    until_terminal,
)

pytestmark = pytest.mark.integration


async def test_turn_ends_in_exactly_one_terminal_event(client: Client) -> None:
    sid = new_session()
    client.attach(sid, "notes", "The launch code is 1234.\n")
    async with client.chat() as ws:
        await send(
            ws, {"type": "message", "session_id": sid, "content": "hi", "client_message_id": "m1"}
        )
        frames = await until_terminal(ws)
        await send(ws, {"type": "ping"})
        assert await recv(ws, 5) == {"type": "pong"}
    got = kinds(frames)
    assert got[0] == "turn_started"
    assert frames[0]["data"]["payload"]["client_message_id"] == "m1"
    assert [k for k in got if k in ("final", "error", "cancelled")] == ["final"]
    assert "tool_call" in got and "tool_result" in got and "reasoning" in got
    final = frames[-1]["data"]
    assert final["payload"]["answer"] == "scripted answer"
    assert final["payload"]["trace_id"]
    assert all(f["data"]["session_id"] == sid for f in frames)
    numbers = seqs(frames)
    assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)


async def test_two_viewers_get_identical_frames(client: Client) -> None:
    sid = new_session()
    client.attach(sid, "notes", "Line one.\nLine two.\n")
    async with client.viewer(sid) as v1, client.viewer(sid) as v2, client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": "SLOW please"})
        await until_terminal(ws)
        a, b = await asyncio.gather(until_completed(v1), until_completed(v2))
    assert a == b
    types = [f["type"] for f in a]
    assert types[0] == "execution_started" and types[-1] == "execution_completed"
    assert "execution_step" in types
    steps = [f["step"] for f in a if f["type"] == "execution_step"]
    tool_steps = [s for s in steps if s["type"] == "tool"]
    llm_ids = {s["id"] for s in steps if s["type"] == "llm"}
    assert tool_steps and all(s["parent_id"] in llm_ids for s in tool_steps)
    assert all(s["depth"] == 0 for s in steps)


async def test_dropped_socket_resume_loses_and_duplicates_nothing(client: Client) -> None:
    sid = new_session()
    client.attach(sid, "notes", "Alpha.\nBeta.\n")
    async with client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": "SLOW and steady"})
        first = [await recv(ws), await recv(ws)]
    last_seen = first[-1]["data"]["seq"]
    await asyncio.sleep(4.0)  # the turn goes on with nobody watching
    async with client.chat() as ws:
        await send(ws, {"type": "resume", "session_id": sid, "after_seq": last_seen})
        rest = await until_terminal(ws)
    async with client.chat() as ws:
        await send(ws, {"type": "resume", "session_id": sid, "after_seq": 0})
        everything = await until_terminal(ws)
    assert first + rest == everything
    assert kinds(everything).count("final") == 1


async def test_three_concurrent_sessions_never_mix(client: Client) -> None:
    sids = [new_session("mix") for _ in range(3)]
    for sid in sids:
        client.attach(sid, "notes", f"document of {sid}\n")

    async def one(sid: str) -> list[dict]:
        async with client.chat() as ws:
            await send(
                ws,
                {
                    "type": "message",
                    "session_id": sid,
                    "content": f"SLOW {sid}",
                    "client_message_id": sid,
                },
            )
            return await until_terminal(ws)

    results = await asyncio.gather(*(one(s) for s in sids))
    for sid, frames in zip(sids, results, strict=True):
        assert {f["data"]["session_id"] for f in frames} == {sid}
        assert frames[0]["data"]["payload"]["client_message_id"] == sid
        assert kinds(frames)[-1] == "final"
        results_text = [f["data"]["text"] for f in frames if f["data"]["kind"] == "tool_result"]
        assert any(sid in t for t in results_text)


async def test_second_message_during_turn_is_refused(client: Client) -> None:
    sid = new_session()
    client.attach(sid, "notes", "x\n")
    async with client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": "SLOW one"})
        assert (await recv(ws))["data"]["kind"] == "turn_started"
        await send(ws, {"type": "message", "session_id": sid, "content": "two"})
        frames = await until_terminal(ws)
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["turn_in_progress"]
    assert kinds(frames).count("turn_started") == 0  # only the first turn started
    assert kinds(frames)[-1] == "final"
    detail = client.http.get(f"/api/v1/sessions/{sid}").json()
    assert [t["content"] for t in detail["turns"]] == ["SLOW one"]


async def test_cancel_ends_turn_with_cancelled_and_session_accepts_next(client: Client) -> None:
    sid = new_session()
    async with client.chat() as ws:
        await send(ws, {"type": "cancel", "session_id": sid})
        assert (await recv(ws))["code"] == "no_turn_running"
        await send(ws, {"type": "message", "session_id": sid, "content": "SLOW_FOREVER"})
        assert (await recv(ws))["data"]["kind"] == "turn_started"
        await asyncio.sleep(0.5)
        await send(ws, {"type": "cancel", "session_id": sid})
        frames = await until_terminal(ws, timeout=20)
        results = [f for f in frames if f["type"] == "command_result"]
        assert results and results[0]["result"]["status"] == "ok"
        assert frames.index(results[0]) < len(frames) - 1
        assert kinds(frames)[-1] == "cancelled"
        await send(ws, {"type": "message", "session_id": sid, "content": "after cancel"})
        nxt = await until_terminal(ws)
    assert kinds(nxt)[-1] == "final"
    after = seqs(frames)[-1]
    assert seqs(nxt)[0] > after
    detail = client.http.get(f"/api/v1/sessions/{sid}").json()
    assert [t["status"] for t in detail["turns"]] == ["cancelled", "completed"]


async def test_model_timeout_is_an_error_event_and_session_stays_usable(client: Client) -> None:
    sid = new_session()
    async with client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": "MODEL_TIMEOUT now"})
        frames = await until_terminal(ws)
        assert kinds(frames)[-1] == "error"
        assert frames[-1]["data"]["payload"]["code"] == "model_timeout"
        await send(ws, {"type": "message", "session_id": sid, "content": "again"})
        assert kinds(await until_terminal(ws))[-1] == "final"
