"""The limits over a turn's whole recursion tree, each reached, each reported.

These drive a ``SessionActor`` made with settings of their own (tight limits) on the
same real Ray cluster, MLflow server and store as the Serve app, through the actor's
own methods; the HTTP and WebSocket layers are covered elsewhere.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from fleet_rlm.config import Settings
from fleet_rlm.identity import SessionKey
from fleet_rlm.runtime.actors import SessionActors
from fleet_rlm.store import Store
from tests.integration.test_delegation import BIG

pytestmark = pytest.mark.integration

TERMINAL = {"final", "error", "cancelled"}


async def _run_turn(settings: Settings, content: str, timeout: float = 120.0) -> list[dict]:
    key = SessionKey("budgets", "tester", f"b-{uuid.uuid4().hex[:10]}")
    Store.from_settings(settings).put_document(key, "big", BIG)
    actors = SessionActors(settings)
    started = await actors.call(key, "start_turn", content, None)
    assert started["ok"], started
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    entries: list[dict] = []
    cursor = 0
    while loop.time() < deadline:
        answer = await actors.call(key, "wait_events", cursor, 5.0)
        entries += answer["entries"]
        if entries:
            cursor = entries[-1]["seq"]
        if any(e["channel"] == "chat" and e["kind"] in TERMINAL for e in entries):
            await actors.kill(key)
            return entries
    pytest.fail("the turn did not end in time")


def _chat(entries: list[dict], kind: str) -> list[dict]:
    return [e["frame"]["data"] for e in entries if e["channel"] == "chat" and e["kind"] == kind]


def _steps(entries: list[dict]) -> list[dict]:
    return [e["frame"]["step"] for e in entries if e["kind"] == "execution_step"]


async def test_lm_call_limit_ends_branches_with_observations(
    settings: Settings, base_url: str
) -> None:
    tight = settings.model_copy(update={"rlm_max_lm_calls": 3})
    entries = await _run_turn(tight, "DELEGATE_ME under a tight budget")
    statuses = _chat(entries, "status")
    codes = [s["payload"].get("code") for s in statuses]
    assert "lm_budget_exhausted" in codes, statuses
    terminal = [e for e in entries if e["channel"] == "chat" and e["kind"] in TERMINAL]
    assert len(terminal) == 1
    assert terminal[0]["frame"]["data"]["payload"].get("code") == "lm_budget_exhausted"
    plans = [
        s for s in _steps(entries) if s["type"] == "llm" and s["label"] in ("plan", "llm_query")
    ]
    assert len(plans) <= 3
    limits = [s for s in _steps(entries) if s["type"] == "output" and s["label"] == "limit"]
    assert limits, "a limit step should mark the branch that hit it"


async def test_wall_time_limit_stops_a_slow_branch(settings: Settings, base_url: str) -> None:
    tight = settings.model_copy(update={"rlm_wall_time_s": 4.0})
    started = asyncio.get_running_loop().time()
    entries = await _run_turn(tight, "SLOW_CHILD please")
    elapsed = asyncio.get_running_loop().time() - started
    codes = [s["payload"].get("code") for s in _chat(entries, "status")]
    assert "wall_time_exceeded" in codes, codes
    terminal = [e for e in entries if e["channel"] == "chat" and e["kind"] in TERMINAL]
    assert len(terminal) == 1
    assert elapsed < 30, "the slow model call should have been cut off at the wall-time limit"
    limits = [s for s in _steps(entries) if s["label"] == "limit" and s["depth"] == 1]
    assert [s["output"]["code"] for s in limits] == ["wall_time_exceeded"]


async def test_large_document_is_delegated_before_planning(
    settings: Settings, base_url: str
) -> None:
    routed = settings.model_copy(update={"delegate_threshold_chars": 10_000})
    entries = await _run_turn(routed, "ZETA6: what does the big document say?")
    calls = _chat(entries, "tool_call")
    assert calls and calls[0]["payload"]["tool"] == "delegate_to_rlm"
    assert calls[0]["payload"]["args"]["document"] == "big"
    results = _chat(entries, "tool_result")
    assert results[0]["text"] == "FLAT-OK"
    steps = _steps(entries)
    assert steps[0]["type"] == "delegate" and steps[0]["depth"] == 0
    assert any(s["depth"] == 1 for s in steps)
    assert _chat(entries, "final")


async def test_unparseable_planner_after_delegation_answers_with_the_finding(
    settings: Settings, base_url: str
) -> None:
    routed = settings.model_copy(update={"delegate_threshold_chars": 10_000})
    entries = await _run_turn(routed, "ZETA6 UNPARSEABLE: what does the big document say?")
    finals = _chat(entries, "final")
    assert [f["payload"]["answer"] for f in finals] == ["FLAT-OK"]
    codes = [s["payload"].get("code") for s in _chat(entries, "status")]
    assert "model_output_unparseable" in codes


async def test_unparseable_planner_without_a_finding_is_an_error(
    settings: Settings, base_url: str
) -> None:
    entries = await _run_turn(settings, "UNPARSEABLE and nothing delegated")
    errors = _chat(entries, "error")
    assert [e["payload"]["code"] for e in errors] == ["model_output_unparseable"]
