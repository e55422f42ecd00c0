"""Each turn is one MLflow trace on a real tracking server, tagged with its session."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from fleet_rlm.config import Settings
from tests.integration.wsclient import Client, new_session, send, until_terminal

pytestmark = pytest.mark.integration


def _trace(uri: str, trace_id: str, timeout: float = 20.0):
    client = MlflowClient(tracking_uri=uri)
    deadline = time.monotonic() + timeout
    while True:
        try:
            trace = client.get_trace(trace_id)
            if trace.data.spans:
                return trace
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            pytest.fail(f"trace {trace_id} has no spans after {timeout} s")
        time.sleep(0.5)


async def test_turn_is_one_trace_with_agent_spans_and_metadata(
    client: Client, settings: Settings
) -> None:
    sid = new_session("traced")
    client.attach(sid, "notes", "one line\n")
    async with client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": "trace me"})
        frames = await until_terminal(ws)
    final = frames[-1]["data"]
    trace_id = final["payload"]["trace_id"]
    assert final["trace_id"] == trace_id
    assert final["payload"]["trace_url"].startswith(settings.mlflow_tracking_uri)
    assert trace_id in final["payload"]["trace_url"]
    trace = _trace(settings.mlflow_tracking_uri, trace_id)
    spans = trace.data.spans
    roots = [s for s in spans if s.parent_id is None]
    assert [r.name for r in roots] == ["respond"]
    by_id = {s.span_id: s for s in spans}
    for span in spans:  # every parent chain ends at the root, within this trace
        node = span
        while node.parent_id is not None:
            node = by_id[node.parent_id]
        assert node is roots[0]
    names = " ".join(s.name for s in spans)
    assert "list_documents" in names, names
    assert any(s.span_type == "LLM" or "LM" in s.name for s in spans), names
    meta = trace.info.trace_metadata
    assert meta["mlflow.trace.session"] == sid
    assert meta["mlflow.trace.user"] == "alice"
    assert meta["fleet_rlm.workspace_id"] == "w1"
    assert meta["fleet_rlm.turn_index"] == "1"
    turn = client.http.get(f"/api/v1/sessions/{sid}").json()["turns"][0]
    assert turn["trace_id"] == trace_id
