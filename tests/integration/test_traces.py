"""Trace listing and feedback on real Ray, a real MLflow server and the real Serve app.

Twenty recursive turns run at once (twenty sessions, one turn each; each turn delegates to
an RLM child, which calls ``llm_query`` from its sandbox unless the bounded sandbox pool
turns it away). They must give exactly twenty traces, each holding all of its own turn's
spans and nothing else, and no stray trace beside them; the session trace list must show
each with its child delegation; feedback on one must be visible as MLflow assessments.
MLflow down or disabled (503) is in tests/unit/api/test_trace_routes.py, since the MLflow
server here is shared by every integration test.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from mlflow import MlflowClient
from mlflow.entities import Trace, TraceData
from mlflow.exceptions import MlflowException
from mlflow.tracing.client import TracingClient
from sqlalchemy import select

from fleet_rlm.config import Settings
from fleet_rlm.observability.mlflow_runtime import apply_mlflow_client_env
from fleet_rlm.store import Store
from fleet_rlm.store.schema import FeedbackRow
from tests.integration.wsclient import Client, new_session, send, until_completed, until_terminal

pytestmark = pytest.mark.integration

TURNS = 20
BIG = "".join(f"line {i}: nothing to see here\n" for i in range(2000))
ITEM_KEYS = {
    "trace_id",
    "turn_index",
    "status",
    "start_time",
    "duration_ms",
    "span_count",
    "delegations",
}
SANDBOX_BUSY = "sandbox_unavailable"
DELEGATION_KEYS = {"span_id", "parent_span_id", "depth", "name", "status"}


@dataclass
class Turn:
    session_id: str
    content: str
    trace_id: str | None  # None when the turn ran untraced
    span_ids: set[str]  # every span id the session's execution frames name
    child_queries: int  # llm_query steps at depth >= 1
    codes: list[str]  # the codes of the turn's status events (limits that ended a branch)


@dataclass
class Twenty:
    prefix: str
    turns: list[Turn]
    started_ms: int
    ended_ms: int
    wall_s: float


def traces_path(sid: str) -> str:
    return f"/api/v1/sessions/{sid}/traces"


def _traced(run: Twenty) -> list[Turn]:
    """The turns that got a trace (the first test fails if any did not)."""
    turns = [turn for turn in run.turns if turn.trace_id]
    assert len(turns) >= 3, [turn.trace_id for turn in run.turns]
    return turns


async def _recursive_turn(client: Client, sid: str) -> Turn:
    content = f"DELEGATE_FLAT for session {sid}"
    async with client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": content})
        chat = await until_terminal(ws, timeout=900)
    final = chat[-1]["data"]
    assert final["kind"] == "final", final
    async with client.viewer(sid, after_seq=0) as viewer:
        frames = await until_completed(viewer, timeout=60)
    steps = [f["step"] for f in frames if f["type"] == "execution_step"]
    span_ids = {s["span_id"] for s in steps if s.get("span_id")}
    queries = sum(1 for s in steps if s["depth"] >= 1 and s["label"] == "llm_query")
    codes = [
        str(f["data"]["payload"].get("code"))
        for f in chat
        if f["type"] == "event" and f["data"]["kind"] == "status"
    ]
    return Turn(sid, content, final["payload"]["trace_id"], span_ids, queries, codes)


async def _warm_up(client: Client) -> None:
    """One traced turn first, so that the experiment exists before the twenty start.

    Twenty session actors that all find the experiment missing race to create it, and
    ``mlflow.set_experiment`` (3.17) returns early for every loser of that race without
    making the experiment active, so their traces go to MLflow's Default experiment. That
    is a start-up bug of its own (tracing's ``_configure``), not what this module tests.
    """
    sid = new_session("warm")
    client.attach(sid, "notes", "one line\n")
    async with client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": "warm up"})
        frames = await until_terminal(ws, timeout=120)
    assert frames[-1]["data"]["payload"].get("trace_id"), frames[-1]


@pytest.fixture(scope="module")
async def twenty(base_url: str, settings: Settings) -> Twenty:
    alice = Client(base_url, settings, user_id="alice")
    prefix = f"t20-{uuid.uuid4().hex[:8]}"
    sids = [f"{prefix}-{i:02d}" for i in range(TURNS)]
    for sid in sids:
        alice.attach(sid, "big", BIG)
    await _warm_up(alice)
    started_ms = int(time.time() * 1000)
    clock = time.monotonic()
    turns = await asyncio.gather(*(_recursive_turn(alice, sid) for sid in sids))
    wall_s = time.monotonic() - clock
    print(f"\n{TURNS} concurrent recursive turns: {wall_s:.1f} s wall")
    return Twenty(prefix, list(turns), started_ms, int(time.time() * 1000), wall_s)


def _search(settings: Settings, filter_string: str) -> list[Any]:
    """Every trace of the experiment that matches, with whatever of its spans landed.

    ``search_traces(include_spans=True)`` would silently leave out a trace that lost
    spans, which is exactly what this module must see; so the spans are read per trace.
    """
    apply_mlflow_client_env()  # as the product does: no minutes of retries on a 500
    uri = settings.mlflow_tracking_uri
    experiment = MlflowClient(uri).get_experiment_by_name(settings.mlflow_experiment)
    assert experiment is not None
    tracing = TracingClient(uri)
    infos: list[Any] = []
    token = None
    while True:
        page = tracing.search_traces(
            locations=[experiment.experiment_id],
            filter_string=filter_string,
            max_results=100,
            page_token=token,
            include_spans=False,
        )
        infos.extend(trace.info for trace in page)
        token = page.token
        if not token:
            break
    return [_with_landed_spans(tracing, info) for info in infos]


def _with_landed_spans(tracing: TracingClient, info: Any) -> Any:
    try:
        return tracing.store.get_trace(info.trace_id, allow_partial=True)
    except MlflowException:  # MLflow's answer for a trace none of whose spans landed
        return Trace(info, TraceData(spans=[]))


def _landed(trace: Any) -> bool:
    names = [s.name for s in trace.data.spans]
    return trace.info.state.value == "OK" and "respond" in names and "rlm_child depth=1" in names


def _window(settings: Settings, run: Twenty, timeout_s: float = 120.0) -> list[Any]:
    """Every trace begun while the twenty turns ran, once all twenty have landed."""
    where = f"trace.timestamp_ms >= {run.started_ms} AND trace.timestamp_ms <= {run.ended_ms}"
    deadline = time.monotonic() + timeout_s
    while True:
        found = _search(settings, where)
        ours = [t for t in found if t.info.trace_id in {turn.trace_id for turn in run.turns}]
        if (len(ours) == TURNS and all(_landed(t) for t in ours)) or time.monotonic() > deadline:
            return found
        time.sleep(1.0)


def _root(trace: Any) -> Any:
    roots = [s for s in trace.data.spans if s.parent_id is None]
    assert [r.name for r in roots] == ["respond"], (
        trace.info.trace_id,
        trace.info.trace_metadata.get("mlflow.trace.session"),
        sorted(s.name for s in trace.data.spans),
    )
    return roots[0]


# Not strict: on this 2-core machine with the one-worker SQLite MLflow server, these pass
# only some of the time, and the cause is MLflow's, not the runtime's (docs/limits.md).
KNOWN_LOSS = pytest.mark.xfail(
    strict=False,
    reason="known loss (docs/limits.md): under twenty concurrent recursive turns on 2 cores"
    " with the one-worker SQLite MLflow server, MLflow's exporter can drop spans, or a"
    " trace's whole export, without a word",
)


def _whole(trace: Any) -> bool:
    """Both processes' spans landed: the turn's own (rooted at `respond`) and the child's."""
    names = [s.name for s in trace.data.spans if s.parent_id is None]
    return names == ["respond"] and any(s.name.startswith("rlm_child") for s in trace.data.spans)


@KNOWN_LOSS
async def test_twenty_concurrent_recursive_turns_give_twenty_traces(
    twenty: Twenty, settings: Settings
) -> None:
    busy = sum(SANDBOX_BUSY in turn.codes for turn in twenty.turns)
    print(f"\n{busy} of {TURNS} children found no free sandbox")
    untraced = [turn.session_id for turn in twenty.turns if not turn.trace_id]
    assert not untraced, f"these turns ran untraced: {untraced}"
    window = _window(settings, twenty)
    by_session = {turn.session_id: turn for turn in twenty.turns}
    owner = {span_id: turn.session_id for turn in twenty.turns for span_id in turn.span_ids}

    # No orphan: every trace begun in the window is a turn's, with the turn's metadata.
    for trace in window:
        assert trace.info.trace_metadata.get("mlflow.trace.session"), trace.info.trace_id
    ours = [t for t in window if t.info.trace_metadata["mlflow.trace.session"] in by_session]
    assert len(ours) == TURNS
    # Exactly one trace per session, ever, and it is the one the final event named.
    of_sessions = _search(settings, f"metadata.`mlflow.trace.session` LIKE '{twenty.prefix}-%'")
    assert sorted(t.info.trace_id for t in of_sessions) == sorted(t.trace_id for t in twenty.turns)

    partial = []
    for trace in ours:
        meta = trace.info.trace_metadata
        turn = by_session[meta["mlflow.trace.session"]]
        assert trace.info.trace_id == turn.trace_id
        assert (meta["mlflow.trace.user"], meta["fleet_rlm.workspace_id"]) == ("alice", "w1")
        assert meta["fleet_rlm.turn_index"] == "1"
        spans = {s.span_id: s for s in trace.data.spans}
        # No span in the wrong trace: every span here that a session's frames name is this
        # session's, whatever landed.
        strangers = {owner[i] for i in spans if owner.get(i, turn.session_id) != turn.session_id}
        assert not strangers, (trace.info.trace_id, strangers)
        if not _whole(trace):
            partial.append(trace.info.trace_id)
            continue
        root = _root(trace)
        assert root.inputs == {"message": turn.content}
        for span in spans.values():  # every span chains to this trace's own root
            node = span
            while node.parent_id is not None:
                node = spans[node.parent_id]
            assert node is root
        assert turn.span_ids and turn.span_ids <= spans.keys(), turn.span_ids - spans.keys()
        children = [s for s in spans.values() if s.name.startswith("rlm_child")]
        assert [c.attributes.get("fleet_rlm.depth") for c in children] == [1]
        # The child's llm_query, answered from inside its sandbox, nests under the child.
        queries = [s for s in spans.values() if s.name == "llm_query"]
        assert all(_under(q, children[0], spans) for q in queries)
        if SANDBOX_BUSY not in turn.codes:
            assert len(queries) == turn.child_queries >= 1, (turn.codes, turn.child_queries)
    print(f"{len(partial)} of {TURNS} traces partial: {partial}")
    assert len(partial) < TURNS, "no trace landed whole"
    # The pool (SANDBOX_MAX_TOTAL) may turn some children away under this load; they end
    # their branch with an observation. The others must all have called back from a sandbox.
    assert any(SANDBOX_BUSY not in turn.codes for turn in twenty.turns)


@KNOWN_LOSS
async def test_twenty_concurrent_traces_are_all_whole(twenty: Twenty, settings: Settings) -> None:
    window = _window(settings, twenty)
    ids = {turn.trace_id for turn in twenty.turns}
    assert [t.info.trace_id for t in window if t.info.trace_id in ids and not _whole(t)] == []


def _under(span: Any, ancestor: Any, spans: dict[str, Any]) -> bool:
    node = span
    while node.parent_id is not None:
        node = spans[node.parent_id]
        if node is ancestor:
            return True
    return False


@KNOWN_LOSS
async def test_session_trace_list_shows_the_turn_and_its_delegation(
    twenty: Twenty, client: Client, settings: Settings
) -> None:
    traces = {t.info.trace_id: t for t in _window(settings, twenty)}
    for turn in twenty.turns:
        answer = client.http.get(traces_path(turn.session_id))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"items", "next_page_token"} and body["next_page_token"] is None
        [item] = body["items"]
        assert set(item) == ITEM_KEYS
        trace = traces[turn.trace_id]
        assert item["trace_id"] == turn.trace_id and item["turn_index"] == 1
        assert item["status"] == "ok"
        assert item["span_count"] == len(trace.data.spans)
        assert isinstance(item["duration_ms"], int) and item["start_time"].endswith("Z")
        if not _whole(trace):  # see test_twenty_concurrent_traces_are_all_whole
            continue
        [child] = item["delegations"]
        assert set(child) == DELEGATION_KEYS
        span = next(s for s in trace.data.spans if s.span_id == child["span_id"])
        assert child["depth"] == 1 and child["name"] == span.name == "rlm_child depth=1"
        assert child["parent_span_id"] == span.parent_id and child["status"] == "ok"


async def test_trace_list_pages_oldest_turn_first(client: Client) -> None:
    sid = new_session("pages")
    client.attach(sid, "notes", "one line\n")
    trace_ids = []
    async with client.chat() as ws:
        for i in range(3):
            await send(ws, {"type": "message", "session_id": sid, "content": f"page me {i}"})
            frames = await until_terminal(ws, timeout=120)
            assert frames[-1]["data"]["kind"] == "final", frames[-1]
            trace_ids.append(frames[-1]["data"]["payload"]["trace_id"])
    items, pages, params = [], 0, {"limit": 2}
    deadline = time.monotonic() + 60
    while True:
        body = client.http.get(traces_path(sid), params=params).json()
        items.extend(body["items"])
        pages += 1
        if body["next_page_token"] is None:
            if len(items) == 3 or time.monotonic() > deadline:
                break
            items, pages, params = [], 0, {"limit": 2}  # not all landed yet: start over
            time.sleep(1.0)
            continue
        assert len(body["items"]) == 2
        params = {"limit": 2, "page_token": body["next_page_token"]}
    assert [i["trace_id"] for i in items] == trace_ids
    assert [i["turn_index"] for i in items] == [1, 2, 3] and pages == 2
    assert all(i["delegations"] == [] for i in items)


async def test_feedback_is_an_mlflow_assessment_by_the_caller(
    twenty: Twenty, client: Client, settings: Settings
) -> None:
    turn = _traced(twenty)[0]
    body = {
        "trace_id": turn.trace_id,
        "value": False,
        "comment": "missed the point",
        "expected_response": "FLAT-OK, with reasons",
    }
    answer = client.http.post("/api/v1/traces/feedback", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "ok": True,
        "trace_id": turn.trace_id,
        "feedback_logged": True,
        "expectation_logged": True,
    }
    info = _assessed(settings, turn)
    by_name = {a.name: a for a in info.assessments}
    feedback, expectation = by_name["user_feedback"], by_name["expected_response"]
    for assessment in (feedback, expectation):
        assert assessment.source.source_type == "HUMAN"
        assert assessment.source.source_id == "alice"
    assert feedback.feedback.value is False and feedback.rationale == "missed the point"
    assert expectation.expectation.value == "FLAT-OK, with reasons"

    store = Store.from_settings(settings)
    with store.engine.connect() as db:
        rows = db.execute(select(FeedbackRow).where(FeedbackRow.trace_id == turn.trace_id)).all()
    assert [(r.workspace_id, r.user_id, r.session_id, r.value) for r in rows] == [
        ("w1", "alice", turn.session_id, False)
    ]
    store.dispose()


async def test_feedback_without_expected_response_logs_no_expectation(
    twenty: Twenty, client: Client, settings: Settings
) -> None:
    turn = _traced(twenty)[1]
    answer = client.http.post(
        "/api/v1/traces/feedback", json={"trace_id": turn.trace_id, "value": True}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["expectation_logged"] is False
    info = _assessed(settings, turn)
    assert [(a.name, a.feedback.value) for a in info.assessments] == [("user_feedback", True)]


def _assessed(settings: Settings, turn: Turn) -> Any:
    """The trace's info as MLflow serves it, assessments included (spans are not needed)."""
    return TracingClient(settings.mlflow_tracking_uri).get_trace_info(str(turn.trace_id))


def _error(answer: Any, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["code"] == code and answer.json()["message"]


async def test_another_identity_may_not_rate_or_list_alices_traces(
    twenty: Twenty, other_client: Client, base_url: str, settings: Settings
) -> None:
    turn = _traced(twenty)[2]
    rating = {"trace_id": turn.trace_id, "value": False, "comment": "sabotage"}
    alice_elsewhere = Client(base_url, settings, user_id="alice", workspace="w2")
    for stranger in (other_client, alice_elsewhere):
        _error(stranger.http.post("/api/v1/traces/feedback", json=rating), 403, "forbidden")
        _error(stranger.http.get(traces_path(turn.session_id)), 404, "not_found")
    info = _assessed(settings, turn)
    assert info.assessments == []


async def test_feedback_on_an_unknown_trace_is_404(client: Client) -> None:
    unknown = {"trace_id": "tr-" + uuid.uuid4().hex, "value": True}
    _error(client.http.post("/api/v1/traces/feedback", json=unknown), 404, "not_found")


async def test_listing_an_unknown_session_is_404(client: Client) -> None:
    _error(client.http.get(traces_path(new_session("never"))), 404, "not_found")
