"""The HTTP routes over the real Serve app: documents, pagination, errors, readiness, status.

Each test that counts sessions or documents uses a user of its own (``fresh``), since
the other integration tests share ``alice``.
"""

from __future__ import annotations

import asyncio
import base64
import re
import uuid
from typing import Any

import httpx
import pytest

from fleet_rlm import __version__
from fleet_rlm.config import Settings
from tests.integration.wsclient import Client, new_session, recv, send

pytestmark = pytest.mark.integration

SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
SESSION_KEYS = {"session_id", "created_at", "updated_at", "turn_count", "last_seq"}
DOCUMENT_ITEM_KEYS = {"document_id", "name", "chars", "created_at"}


@pytest.fixture
def fresh(base_url: str, settings: Settings) -> Client:
    return Client(base_url, settings, user_id=f"http-{uuid.uuid4().hex[:10]}")


def assert_error(answer: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """A non-2xx answer with exactly PROTOCOL.md's error body."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"code", "message"}, body
    assert body["code"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    return body


def docs_path(sid: str) -> str:
    return f"/api/v1/sessions/{sid}/documents"


def post_document(client: Client, sid: str, body: Any) -> httpx.Response:
    return client.http.post(docs_path(sid), json=body)


def all_pages(client: Client, path: str, limit: int) -> list[dict[str, Any]]:
    """Follow ``next_page_token`` to the end; every page but the last is full."""
    items: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": limit}
    for _ in range(100):
        answer = client.http.get(path, params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert set(body) == {"items", "next_page_token"}
        items += body["items"]
        if body["next_page_token"] is None:
            assert len(body["items"]) <= limit
            return items
        assert len(body["items"]) == limit
        params = {"limit": limit, "page_token": body["next_page_token"]}
    raise AssertionError("pagination did not end")


# --- documents -----------------------------------------------------------------------


def test_upload_answers_201_with_the_document(fresh: Client) -> None:
    sid = new_session("doc")
    answer = post_document(fresh, sid, {"name": "Apache-2.0", "text": "Grüße\nzwei"})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert set(body) == {"document_id", "name", "chars"}
    assert body["name"] == "Apache-2.0"
    assert body["chars"] == len("Grüße\nzwei")
    assert isinstance(body["document_id"], str) and body["document_id"]


def test_same_name_replaces_the_document(fresh: Client) -> None:
    sid = new_session("doc")
    first = fresh.attach(sid, "notes", "first version")
    second = fresh.attach(sid, "notes", "the second, longer version")
    fresh.attach(sid, "other", "x")
    assert second["document_id"] != first["document_id"]
    items = fresh.http.get(docs_path(sid)).json()["items"]
    notes = [i for i in items if i["name"] == "notes"]
    assert len(items) == 2 and len(notes) == 1
    assert notes[0]["document_id"] == second["document_id"]
    assert notes[0]["chars"] == len("the second, longer version")


def test_document_list_items_carry_no_text(fresh: Client) -> None:
    sid = new_session("doc")
    fresh.attach(sid, "a", "secret-free text")
    [item] = fresh.http.get(docs_path(sid)).json()["items"]
    assert set(item) == DOCUMENT_ITEM_KEYS


def test_name_of_200_characters_is_accepted(fresh: Client) -> None:
    answer = post_document(fresh, new_session("doc"), {"name": "n" * 200, "text": "t"})
    assert answer.status_code == 201, answer.text


def test_document_over_the_maximum_is_413_and_creates_nothing(
    fresh: Client, settings: Settings
) -> None:
    sid = new_session("big")
    text = "x" * (settings.document_max_bytes + 1)
    answer = post_document(fresh, sid, {"name": "big", "text": text})
    assert_error(answer, 413, "document_too_large")
    assert_error(fresh.http.get(f"/api/v1/sessions/{sid}"), 404, "not_found")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"name": "a/b", "text": "t"}, id="name-with-slash"),
        pytest.param({"name": "/", "text": "t"}, id="name-only-slash"),
        pytest.param({"name": "", "text": "t"}, id="name-empty"),
        pytest.param({"name": "n" * 201, "text": "t"}, id="name-201-chars"),
        pytest.param({"name": 5, "text": "t"}, id="name-not-a-string"),
        pytest.param({"text": "t"}, id="name-missing"),
        pytest.param({"name": "a"}, id="text-missing"),
        pytest.param({"name": "a", "text": 3}, id="text-not-a-string"),
        pytest.param(["a", "t"], id="array-body"),
        pytest.param("a", id="string-body"),
    ],
)
def test_invalid_document_request_is_422(fresh: Client, body: Any) -> None:
    assert_error(post_document(fresh, new_session("doc"), body), 422, "invalid_request")


@pytest.mark.parametrize(
    "raw",
    [b'{"name": "a", "text": ', b"not json", b"", b"\xff\xfe\xfd"],
    ids=["truncated", "not-json", "empty", "not-utf8"],
)
def test_malformed_json_body_is_422(fresh: Client, raw: bytes) -> None:
    answer = fresh.http.post(
        docs_path(new_session("doc")), content=raw, headers={"content-type": "application/json"}
    )
    assert_error(answer, 422, "invalid_request")


@pytest.mark.parametrize("field", ["workspace_id", "user_id"])
def test_identity_fields_in_the_body_are_refused(fresh: Client, field: str) -> None:
    body = {"name": "a", "text": "t", field: "mallory"}
    assert_error(post_document(fresh, new_session("doc"), body), 422, "unsupported_identity_fields")


@pytest.mark.parametrize("field", ["workspace_id", "user_id"])
def test_identity_fields_in_the_query_are_refused(fresh: Client, field: str) -> None:
    answer = fresh.http.get("/api/v1/sessions", params={field: "mallory"})
    assert_error(answer, 422, "unsupported_identity_fields")


@pytest.mark.parametrize(
    "sid",
    [
        pytest.param("s" * 129, id="129-chars"),
        pytest.param("a%20b", id="space"),
        pytest.param("s%C3%A9", id="non-ascii"),
        pytest.param(
            "s1%0A",
            id="trailing-newline",
        ),
    ],
)
def test_invalid_session_id_in_the_path_is_422(fresh: Client, sid: str) -> None:
    assert_error(fresh.http.get(f"/api/v1/sessions/{sid}"), 422, "invalid_session_id")


# --- pagination ----------------------------------------------------------------------


def test_documents_paginate_in_upload_order(fresh: Client) -> None:
    sid = new_session("pages")
    names = [f"doc-{i}" for i in range(5)]
    for name in names:
        fresh.attach(sid, name, name)
    assert [i["name"] for i in all_pages(fresh, docs_path(sid), 2)] == names
    assert [i["name"] for i in all_pages(fresh, docs_path(sid), 5)] == names
    assert [i["name"] for i in all_pages(fresh, docs_path(sid), 100)] == names


def test_default_page_is_20(fresh: Client) -> None:
    sid = new_session("pages")
    for i in range(21):
        fresh.attach(sid, f"d{i:02d}", "x")
    first = fresh.http.get(docs_path(sid)).json()
    assert len(first["items"]) == 20 and first["next_page_token"]
    rest = fresh.http.get(docs_path(sid), params={"page_token": first["next_page_token"]}).json()
    assert [i["name"] for i in rest["items"]] == ["d20"]
    assert rest["next_page_token"] is None


def test_sessions_paginate_and_list_only_the_callers(fresh: Client, client: Client) -> None:
    sids = [new_session("mine") for _ in range(3)]
    for sid in sids:
        fresh.attach(sid, "n", "x")
    client.attach(new_session("theirs"), "n", "x")
    items = all_pages(fresh, "/api/v1/sessions", 2)
    assert [i["session_id"] for i in items] == sids
    assert all(set(i) == SESSION_KEYS for i in items)


@pytest.mark.parametrize("path", ["/api/v1/sessions", "/api/v1/sessions/any-session/documents"])
@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "2.5", ""])
def test_bad_limit_is_422(fresh: Client, path: str, limit: str) -> None:
    assert_error(fresh.http.get(path, params={"limit": limit}), 422, "invalid_request")


@pytest.mark.parametrize("path", ["/api/v1/sessions", "/api/v1/sessions/any-session/documents"])
@pytest.mark.parametrize(
    "token",
    ["garbage!", "Zm9vOjE", "aWQ6eA", "%%%"],
    ids=["symbols", "wrong-prefix", "id-not-a-number", "percent"],
)
def test_garbage_page_token_is_422(fresh: Client, path: str, token: str) -> None:
    assert_error(fresh.http.get(path, params={"page_token": token}), 422, "invalid_request")


def test_page_token_with_an_out_of_range_id_is_422(fresh: Client) -> None:
    token = base64.urlsafe_b64encode(b"id:" + b"9" * 30).decode().rstrip("=")
    answer = fresh.http.get("/api/v1/sessions", params={"page_token": token})
    assert_error(answer, 422, "invalid_request")


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/nothing-here"), ("GET", "/nope"), ("POST", "/api/v2/sessions")],
)
def test_unknown_route_is_404_not_found(fresh: Client, method: str, path: str) -> None:
    assert_error(fresh.http.request(method, path), 404, "not_found")


def test_unknown_route_without_a_token_is_still_a_json_error(base_url: str) -> None:
    answer = httpx.get(f"{base_url}/api/v1/nothing-here")
    assert answer.status_code in (401, 404)
    assert set(answer.json()) == {"code", "message"}


@pytest.mark.parametrize(
    ("method", "path", "auth", "status", "code"),
    [
        ("GET", "/api/v1/sessions", False, 401, "missing_token"),
        ("GET", "/api/v1/runtime/status", False, 401, "missing_token"),
        ("GET", "/api/v1/sessions/never-made", True, 404, "not_found"),
        ("DELETE", "/api/v1/sessions/never-made", True, 404, "not_found"),
        ("PUT", "/api/v1/sessions", True, 405, "method_not_allowed"),
        ("POST", "/health", True, 405, "method_not_allowed"),
        ("GET", "/api/v1/sessions?limit=0", True, 422, "invalid_request"),
        ("GET", "/api/v1/sessions/a%20b/documents", True, 422, "invalid_session_id"),
    ],
)
def test_every_non_2xx_body_is_code_and_message(
    fresh: Client, base_url: str, method: str, path: str, auth: bool, status: int, code: str
) -> None:
    answer = fresh.http.request(method, path) if auth else httpx.request(method, base_url + path)
    body = assert_error(answer, status, code)
    assert SNAKE.match(body["code"])


# --- readiness and status ------------------------------------------------------------


def test_health(base_url: str) -> None:
    answer = httpx.get(f"{base_url}/health")
    assert answer.status_code == 200
    assert answer.json() == {"ok": True, "version": __version__}


def test_ready_body_has_the_protocol_keys(base_url: str) -> None:
    answer = httpx.get(f"{base_url}/ready")
    body = answer.json()
    assert set(body) == {
        "ready",
        "planner_configured",
        "planner",
        "database",
        "database_required",
        "sandbox_provider",
        "sandbox_network_isolated",  # this product's addition (docs/protocol-notes.md)
    }
    assert isinstance(body["sandbox_network_isolated"], bool)
    states = {"ready", "missing", "degraded", "disabled"}
    assert body["planner"] in states and body["database"] in states
    assert body["sandbox_provider"] in {"local", "daytona"}
    assert all(isinstance(body[k], bool) for k in ("ready", "planner_configured"))
    assert isinstance(body["database_required"], bool)
    assert answer.status_code == (200 if body["ready"] else 503)
    assert body["ready"] is True


def test_runtime_status_has_the_seed_keys(fresh: Client) -> None:
    answer = fresh.http.get("/api/v1/runtime/status")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    top = {"app_env", "write_enabled", "ready", "sandbox_provider", "active_models", "llm"}
    top |= {"mlflow", "daytona", "tests", "guidance"}
    assert top <= set(body)
    assert {"planner", "delegate", "delegate_small"} <= set(body["active_models"])
    assert {"model_set", "api_key_set", "planner_configured"} <= set(body["llm"])
    assert {"enabled", "startup_status", "startup_error"} <= set(body["mlflow"])
    assert {"api_key_set", "api_url_set", "target_set"} <= set(body["daytona"])
    assert {"lm", "daytona"} <= set(body["tests"])
    assert body["mlflow"]["startup_status"] in {"ready", "degraded", "disabled", "pending"}
    if body["mlflow"]["startup_status"] == "degraded":
        assert body["mlflow"]["startup_error"]
    for probe in body["tests"].values():
        assert probe is None or {"kind", "ok", "latency_ms", "checked_at"} <= set(probe)
    assert isinstance(body["guidance"], list)
    assert all(isinstance(g, str) for g in body["guidance"])
    assert body["app_env"] == "local" and body["sandbox_provider"] in {"local", "daytona"}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/runtime/tests/lm", None),
        ("POST", "/api/v1/runtime/tests/daytona", None),
        ("GET", "/api/v1/sessions/{sid}/traces", None),
        ("POST", "/api/v1/traces/feedback", {}),
    ],
    ids=["tests-lm", "tests-daytona", "traces", "feedback"],
)
def test_protocol_routes_are_mounted(fresh: Client, method: str, path: str, body: Any) -> None:
    sid = new_session("routes")
    fresh.attach(sid, "n", "x")
    answer = fresh.http.request(method, path.format(sid=sid), json=body, timeout=60)
    assert answer.status_code != 404, answer.text


# --- what creates a session ----------------------------------------------------------


def assert_no_session(client: Client, sid: str) -> None:
    assert_error(client.http.get(f"/api/v1/sessions/{sid}"), 404, "not_found")
    listed = client.http.get("/api/v1/sessions", params={"limit": 100}).json()["items"]
    assert sid not in [i["session_id"] for i in listed]


async def test_a_viewer_does_not_create_the_session(fresh: Client) -> None:
    sid = new_session("viewer")
    async with fresh.viewer(sid) as ws:
        with pytest.raises(TimeoutError):
            await recv(ws, 1.0)  # attached, and nothing to replay
    assert_no_session(fresh, sid)


async def test_a_resume_or_cancel_does_not_create_the_session(fresh: Client) -> None:
    sid = new_session("resume")
    async with fresh.chat() as ws:
        await send(ws, {"type": "resume", "session_id": sid, "after_seq": 0})
        await send(ws, {"type": "cancel", "session_id": sid})
        assert (await recv(ws, 10))["code"] == "no_turn_running"
        await send(ws, {"type": "ping"})
        assert await recv(ws, 10) == {"type": "pong"}
        await asyncio.sleep(0.2)
    assert_no_session(fresh, sid)


def test_a_document_upload_creates_the_session(fresh: Client) -> None:
    sid = new_session("upload")
    assert_no_session(fresh, sid)
    fresh.attach(sid, "n", "x")
    answer = fresh.http.get(f"/api/v1/sessions/{sid}")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == SESSION_KEYS | {"turns"}
    assert (body["session_id"], body["turn_count"], body["turns"]) == (sid, 0, [])
    listed = fresh.http.get("/api/v1/sessions").json()["items"]
    assert [i["session_id"] for i in listed] == [sid]
