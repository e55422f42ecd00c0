"""A recursive turn on real Ray and MLflow: child and grandchild runs, the bridge, one trace."""

from __future__ import annotations

import asyncio

import pytest
import ray

from fleet_rlm.config import Settings
from fleet_rlm.sandbox.pool import POOL_NAME
from tests.integration.test_tracing import _trace
from tests.integration.wsclient import Client, kinds, new_session, recv, send, until_terminal

pytestmark = pytest.mark.integration

BIG = "".join(f"line {i}: nothing to see here\n" for i in range(2000))


async def _turn(client: Client, sid: str, content: str) -> tuple[list[dict], list[dict]]:
    async with client.viewer(sid) as viewer, client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": content})
        chat = await until_terminal(ws, timeout=120)
        steps = []
        while True:
            frame = await recv(viewer, 30)
            steps.append(frame)
            if frame["type"] == "execution_completed":
                break
    return chat, steps


def _chain(step: dict, by_id: dict[str, dict]) -> list[dict]:
    out = [step]
    while out[-1]["parent_id"] is not None:
        out.append(by_id[out[-1]["parent_id"]])
    return out


async def test_recursive_turn_answers_with_nested_events_and_one_trace(
    client: Client, settings: Settings
) -> None:
    sid = new_session("recurse")
    client.attach(sid, "big", BIG)
    chat, frames = await _turn(client, sid, "DELEGATE_ME: what is the code word?")
    final = chat[-1]["data"]
    assert final["kind"] == "final", chat[-1]
    outputs = [
        (f["step"]["depth"], f["step"]["type"], f["step"]["label"], str(f["step"]["output"])[:300])
        for f in frames
        if f["type"] == "execution_step"
    ]
    assert "CODEWORD-42" in final["payload"]["answer"], outputs
    steps = [f["step"] for f in frames if f["type"] == "execution_step"]
    by_id = {s["id"]: s for s in steps}
    depths = {s["depth"] for s in steps}
    assert depths == {0, 1, 2}, depths
    top_delegate = [s for s in steps if s["type"] == "delegate" and s["depth"] == 0]
    assert len(top_delegate) == 1
    for step in steps:
        chain = _chain(step, by_id)  # every parent is a step of this turn
        assert [s["depth"] for s in chain] == sorted(s["depth"] for s in chain)[::-1]
        if step["depth"] > 0:
            assert top_delegate[0] in chain
    queries = [s for s in steps if s["label"] == "llm_query"]
    assert {s["depth"] for s in queries} == {1, 2}
    sub = [s for s in steps if s["type"] == "delegate" and s["depth"] == 1]
    assert len(sub) == 1
    grand = [s for s in steps if s["depth"] == 2]
    assert all(sub[0] in _chain(s, by_id) for s in grand)
    assert {s["type"] for s in steps} >= {"llm", "tool", "repl", "delegate", "output"}

    trace = _trace(settings.mlflow_tracking_uri, final["payload"]["trace_id"], timeout=30)
    spans = trace.data.spans
    span_ids = {s.span_id: s for s in spans}
    roots = [s for s in spans if s.parent_id is None]
    assert [r.name for r in roots] == ["respond"]
    for span in spans:
        node = span
        while node.parent_id is not None:
            node = span_ids[node.parent_id]  # KeyError: a parent outside this trace
        assert node is roots[0]
    children = [s for s in spans if s.name.startswith("rlm_child")]
    assert sorted(s.attributes.get("fleet_rlm.depth") for s in children) == [1, 2]
    pids = {s.attributes.get("fleet_rlm.pid") for s in [roots[0], *children]}
    assert len(pids) == 3, pids
    names = [s.name for s in spans]
    assert names.count("llm_query") == 2 and "sub_rlm" in names
    delegate_span = next(s for s in spans if s.name.endswith("delegate_to_rlm"))
    depth1 = next(s for s in children if s.attributes.get("fleet_rlm.depth") == 1)
    assert delegate_span in _span_chain(depth1, span_ids)


def _span_chain(span, by_id):
    out = [span]
    while out[-1].parent_id is not None:
        out.append(by_id[out[-1].parent_id])
    return out


async def test_depth_limit_ends_the_branch_with_an_observation(client: Client) -> None:
    sid = new_session("deep")
    client.attach(sid, "big", BIG)
    chat, frames = await _turn(client, sid, "DEEP_ME please")
    assert kinds(chat)[-1] == "final"
    statuses = [f["data"] for f in chat if f["data"]["kind"] == "status"]
    assert any(s["payload"].get("code") == "depth_exceeded" for s in statuses), statuses
    steps = [f["step"] for f in frames if f["type"] == "execution_step"]
    limits = [
        s for s in steps if s["type"] == "output" and s["output"].get("code") == "depth_exceeded"
    ]
    assert limits and limits[0]["depth"] == 2
    repl_out = [s for s in steps if s["type"] == "output" and "depth_exceeded" in str(s["output"])]
    assert repl_out


async def test_pool_stays_within_bound_and_leaks_nothing(
    client: Client, settings: Settings
) -> None:
    sids = [new_session("ten") for _ in range(10)]
    for sid in sids:
        client.attach(sid, "big", BIG)

    async def one(sid: str) -> str:
        async with client.chat() as ws:
            await send(ws, {"type": "message", "session_id": sid, "content": "DELEGATE_FLAT now"})
            frames = await until_terminal(ws, timeout=300)
        return frames[-1]["data"]["kind"]

    results = await asyncio.gather(*(one(s) for s in sids))
    assert results == ["final"] * 10
    pool = ray.get_actor(POOL_NAME, namespace=settings.ray_namespace)
    stats = await pool.stats.remote()
    assert stats["high_water"] <= stats["max_total"] == settings.sandbox_max_total
    assert stats["leased"] == 0 and stats["creating"] == 0
    assert stats["total"] == stats["idle"] <= stats["max_total"]
    assert stats["created"] - stats["closed"] == stats["idle"]
