"""The trace routes without Ray: MLflow down, hung or disabled is 503; bad requests are 4xx.

The app is the real one (``build_app``) around a real ``Runtime`` on a SQLite file; the
MLflow "servers" are a closed port on 127.0.0.1 and a listener there that never answers.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from fleet_rlm.api.app import build_app
from fleet_rlm.api.auth import issue_token
from fleet_rlm.api.runtime import Runtime
from fleet_rlm.config import Settings
from fleet_rlm.identity import SessionKey

SECRET = "unit-test-secret-" + "t" * 48
SID = "s-traces"
TRACE_ID = "tr-" + "ab" * 16
FEEDBACK = {"trace_id": TRACE_ID, "value": True}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def silent_mlflow() -> Iterator[str]:
    """A listener on 127.0.0.1 that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def _client(tmp_path: Path, **overrides: Any) -> TestClient:
    settings = Settings(
        app_env="local",
        auth_required=True,
        auth_jwt_secret=SECRET,
        data_dir=tmp_path,
        mlflow_auto_start=False,
        **overrides,
    )
    runtime = Runtime.start(settings)
    runtime.store.ensure_session(SessionKey("w1", "alice", SID))
    token = issue_token(settings, "alice", "w1")
    return TestClient(build_app(runtime), headers={"Authorization": f"Bearer {token}"})


@pytest.fixture
def down(tmp_path: Path) -> TestClient:
    return _client(tmp_path, mlflow_tracking_uri=f"http://127.0.0.1:{_closed_port()}")


@pytest.fixture
def disabled(tmp_path: Path) -> TestClient:
    return _client(tmp_path, mlflow_enabled=False)


def assert_error(answer: httpx.Response, status: int, code: str) -> str:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"code", "message"} and body["code"] == code, body
    assert body["message"]
    return body["message"]


def test_listing_with_mlflow_down_is_503_saying_what_to_do(down: TestClient) -> None:
    message = assert_error(down.get(f"/api/v1/sessions/{SID}/traces"), 503, "mlflow_unavailable")
    assert "make mlflow-server" in message and "MLFLOW_TRACKING_URI" in message


def test_feedback_with_mlflow_down_is_503(down: TestClient) -> None:
    answer = down.post("/api/v1/traces/feedback", json=FEEDBACK)
    assert "make mlflow-server" in assert_error(answer, 503, "mlflow_unavailable")


def test_listing_with_mlflow_disabled_is_503(disabled: TestClient) -> None:
    answer = disabled.get(f"/api/v1/sessions/{SID}/traces")
    assert "MLFLOW_ENABLED" in assert_error(answer, 503, "mlflow_unavailable")


def test_feedback_with_mlflow_disabled_is_503(disabled: TestClient) -> None:
    answer = disabled.post("/api/v1/traces/feedback", json={**FEEDBACK, "comment": "good"})
    assert "MLFLOW_ENABLED" in assert_error(answer, 503, "mlflow_unavailable")


@pytest.mark.parametrize("route", ["list", "feedback"])
def test_a_hung_mlflow_gives_503_not_a_hung_route(
    tmp_path: Path, silent_mlflow: str, route: str
) -> None:
    client = _client(tmp_path, mlflow_tracking_uri=silent_mlflow)
    if route == "list":
        answer = client.get(f"/api/v1/sessions/{SID}/traces")
    else:
        answer = client.post("/api/v1/traces/feedback", json=FEEDBACK)
    assert_error(answer, 503, "mlflow_unavailable")


def test_an_unknown_session_is_404_before_mlflow_is_asked(down: TestClient) -> None:
    assert_error(down.get("/api/v1/sessions/not-mine/traces"), 404, "not_found")


def test_no_token_is_401(down: TestClient) -> None:
    bare = TestClient(down.app)
    assert bare.get(f"/api/v1/sessions/{SID}/traces").status_code == 401
    assert bare.post("/api/v1/traces/feedback", json=FEEDBACK).status_code == 401


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "2.5", "", "9" * 5000])
def test_a_bad_limit_is_422(down: TestClient, limit: str) -> None:
    answer = down.get(f"/api/v1/sessions/{SID}/traces", params={"limit": limit})
    assert_error(answer, 422, "invalid_request")


def test_an_oversized_page_token_is_422(down: TestClient) -> None:
    answer = down.get(f"/api/v1/sessions/{SID}/traces", params={"page_token": "x" * 2000})
    assert_error(answer, 422, "invalid_request")


@pytest.mark.parametrize("field", ["workspace_id", "user_id"])
def test_identity_fields_in_the_query_are_refused(down: TestClient, field: str) -> None:
    answer = down.get(f"/api/v1/sessions/{SID}/traces", params={field: "mallory"})
    assert_error(answer, 422, "unsupported_identity_fields")


@pytest.mark.parametrize("field", ["workspace_id", "user_id"])
def test_identity_fields_in_the_feedback_are_refused(down: TestClient, field: str) -> None:
    answer = down.post("/api/v1/traces/feedback", json={**FEEDBACK, field: "mallory"})
    assert_error(answer, 422, "unsupported_identity_fields")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"value": True}, id="trace-id-missing"),
        pytest.param({"trace_id": "", "value": True}, id="trace-id-empty"),
        pytest.param({"trace_id": "../experiments/1", "value": True}, id="trace-id-path"),
        pytest.param({"trace_id": "t" * 129, "value": True}, id="trace-id-129-chars"),
        pytest.param({"trace_id": 7, "value": True}, id="trace-id-not-a-string"),
        pytest.param({"trace_id": TRACE_ID}, id="value-missing"),
        pytest.param({"trace_id": TRACE_ID, "value": 1}, id="value-an-integer"),
        pytest.param({"trace_id": TRACE_ID, "value": "true"}, id="value-a-string"),
        pytest.param({**FEEDBACK, "comment": 5}, id="comment-not-a-string"),
        pytest.param({**FEEDBACK, "comment": "c" * 10_001}, id="comment-too-long"),
        pytest.param({**FEEDBACK, "expected_response": ["a"]}, id="expected-not-a-string"),
        pytest.param({**FEEDBACK, "rating": 5}, id="unknown-field"),
        pytest.param([TRACE_ID, True], id="array-body"),
    ],
)
def test_a_malformed_feedback_body_is_422(down: TestClient, body: Any) -> None:
    assert_error(down.post("/api/v1/traces/feedback", json=body), 422, "invalid_request")


@pytest.mark.parametrize("raw", [b"", b"not json", b'{"trace_id": ', b"\xff\xfe"])
def test_feedback_that_is_not_json_is_422(down: TestClient, raw: bytes) -> None:
    answer = down.post(
        "/api/v1/traces/feedback", content=raw, headers={"content-type": "application/json"}
    )
    assert_error(answer, 422, "invalid_request")


def test_an_oversized_feedback_body_is_413(down: TestClient) -> None:
    body = {**FEEDBACK, "comment": "c" * (1024 * 1024)}
    assert_error(down.post("/api/v1/traces/feedback", json=body), 413, "request_too_large")
