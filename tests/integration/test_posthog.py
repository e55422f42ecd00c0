"""PostHog analytics of real turns, as the stand-in capture server received them.

The Serve app runs with PostHog on (see conftest); the session actor and the child
runs' worker processes send with the real ``posthog`` client.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleet_rlm.config import Settings
from tests.integration.test_tracing import _trace
from tests.integration.wsclient import Client, new_session, send, until_terminal
from tests.standins.posthog_server import PosthogStandIn

pytestmark = pytest.mark.integration

SECRET = "sk-abc123def456ghi789"
BEARER_TOKEN = "abcdefghijklmnopqrstuvwxyz012345"
BIG = "".join(f"line {i}: nothing to see here\n" for i in range(2000))


def _of(events: list[dict[str, Any]], sid: str, name: str) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == name and e["properties"].get("session_id") == sid]


async def _run(client: Client, sid: str, content: str) -> dict[str, Any]:
    async with client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": content})
        frames = await until_terminal(ws, timeout=120)
    final = frames[-1]["data"]
    assert final["kind"] == "final", final
    return final


async def test_a_turn_sends_its_generations_and_one_turn_event(
    client: Client, settings: Settings, posthog_standin: PosthogStandIn
) -> None:
    sid = new_session("posthog")
    client.attach(sid, "notes", "one line\n")
    content = f"analytics please; my key is api_key={SECRET}, Authorization: Bearer {BEARER_TOKEN}"
    final = await _run(client, sid, content)
    trace_id = final["payload"]["trace_id"]
    assert trace_id

    events = posthog_standin.wait_for(lambda e: bool(_of(e, sid, "$ai_trace")), timeout=30)
    turns = _of(events, sid, "$ai_trace")
    assert len(turns) == 1, turns
    turn = turns[0]["properties"]
    assert turns[0]["distinct_id"] == "alice"
    assert turn["status"] == "completed" and turn["$ai_is_error"] is False
    assert turn["trace_id"] == turn["$ai_trace_id"] == trace_id
    assert (turn["workspace_id"], turn["turn_index"]) == ("w1", 1)
    assert turn["model"] == "scripted/rules" and turn["$ai_latency"] > 0
    assert turn["$ai_output_state"] == final["payload"]["answer"]

    # The actor's one queue sends in order: its generations arrived before the turn event.
    generations = _of(events, sid, "$ai_generation")
    assert len(generations) >= 2, generations
    spans = {s.span_id for s in _trace(settings.mlflow_tracking_uri, trace_id).data.spans}
    for event in generations:
        props = event["properties"]
        assert event["distinct_id"] == "alice"
        assert props["$ai_trace_id"] == props["trace_id"] == trace_id
        assert props["$ai_model"] == "scripted/rules" and props["depth"] == 0
        assert isinstance(props["$ai_latency"], float) and props["$ai_is_error"] is False
        assert props["$ai_input_tokens"] > 0 and props["$ai_output_tokens"] > 0
        assert props["$ai_parent_id"] in spans  # the MLflow span the call was made under

    text = json.dumps(_of(events, sid, "$ai_generation") + turns)
    assert "[redacted]" in text
    everything = posthog_standin.seen_text()
    assert SECRET not in everything and BEARER_TOKEN not in everything
    assert posthog_standin.unexpected == []


async def test_a_recursive_turn_reports_child_generations_in_the_same_trace(
    client: Client, posthog_standin: PosthogStandIn
) -> None:
    sid = new_session("posthog-rec")
    client.attach(sid, "big", BIG)
    final = await _run(client, sid, "DELEGATE_FLAT now")
    trace_id = final["payload"]["trace_id"]

    def done(events: list[dict[str, Any]]) -> bool:
        deep = [e for e in _of(events, sid, "$ai_generation") if e["properties"]["depth"] == 1]
        return bool(_of(events, sid, "$ai_trace")) and len(deep) >= 2

    events = posthog_standin.wait_for(done, timeout=30)
    generations = _of(events, sid, "$ai_generation")
    by_depth = {d: [e for e in generations if e["properties"]["depth"] == d] for d in (0, 1)}
    assert len(by_depth[0]) >= 2 and len(by_depth[1]) >= 2, [
        (e["properties"]["depth"], e["properties"]["$ai_span_name"]) for e in generations
    ]
    for event in generations:
        props = event["properties"]
        assert props["$ai_trace_id"] == props["trace_id"] == trace_id
        assert props["$ai_model"] and props["$ai_latency"] >= 0
        assert props["turn_index"] == 1 and event["distinct_id"] == "alice"
    child_inputs = json.dumps([e["properties"]["$ai_input"] for e in by_depth[1]])
    assert "ZETA6" in child_inputs  # the child's own prompts
    assert len(_of(events, sid, "$ai_trace")) == 1
