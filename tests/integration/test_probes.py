"""The runtime probes: through the real app (cached into the status), and against a dead
LM endpoint, one that never answers, and the Daytona stand-in with good and bad keys."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from fleet_rlm.config import Settings
from fleet_rlm.observability.probes import probe_daytona, probe_lm
from tests.integration.wsclient import Client
from tests.standins.daytona_server import DaytonaStandIn

pytestmark = pytest.mark.integration
pytest_plugins = ("tests.standins.conftest_daytona",)

# Fails the test (rather than hanging the run) if a probe ignored its own timeout.
NEVER_HANG_S = 60.0


def _result_shape(result: dict, kind: str) -> None:
    assert set(result) == {"kind", "ok", "latency_ms", "checked_at", "preflight", "error"}
    assert result["kind"] == kind and isinstance(result["latency_ms"], int)
    assert result["checked_at"].endswith("Z")


def test_lm_probe_through_the_app_is_cached_into_the_status(client: Client) -> None:
    answer = client.http.post("/api/v1/runtime/tests/lm")
    assert answer.status_code == 200, answer.text
    result = answer.json()
    _result_shape(result, "lm")
    assert result["ok"] is True and result["error"] is None, result
    assert result["preflight"]["source"] == "scripted"
    status = client.http.get("/api/v1/runtime/status").json()
    assert status["tests"]["lm"] == result


def test_daytona_probe_without_credentials_says_what_to_set(client: Client) -> None:
    result = client.http.post("/api/v1/runtime/tests/daytona").json()
    _result_shape(result, "daytona")
    assert result["ok"] is False
    assert "DAYTONA_API_KEY" in result["error"]
    assert result["preflight"]["api_key_set"] is False
    status = client.http.get("/api/v1/runtime/status").json()
    assert status["tests"]["daytona"] == result
    assert any("daytona probe failed" in g for g in status["guidance"]), status["guidance"]


def test_probes_need_auth(base_url: str) -> None:
    for kind in ("lm", "daytona"):
        answer = httpx.post(f"{base_url}/api/v1/runtime/tests/{kind}", timeout=30)
        assert answer.status_code == 401
        assert answer.json()["code"]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _lm_settings(port: int) -> Settings:
    return Settings(
        dspy_lm_model="openai/probe-model",
        dspy_lm_api_base=f"http://127.0.0.1:{port}/v1",
        dspy_lm_api_key="sk-probe-secret-123456789",
        embedded_model=False,
    )


async def test_lm_probe_against_a_dead_endpoint() -> None:
    result = await asyncio.wait_for(probe_lm(_lm_settings(_closed_port()), 5.0), NEVER_HANG_S)
    _result_shape(result, "lm")
    assert result["ok"] is False and result["error"]
    assert "sk-probe-secret" not in str(result)


@pytest.fixture
def silent_endpoint() -> Iterator[tuple[int, threading.Event]]:
    """Accepts connections and never answers until released."""
    release = threading.Event()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while not release.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], release
    release.set()
    listener.close()
    for conn in held:
        conn.close()


async def test_lm_probe_against_an_endpoint_that_never_answers(
    silent_endpoint: tuple[int, threading.Event],
) -> None:
    port, release = silent_endpoint
    result = await asyncio.wait_for(probe_lm(_lm_settings(port), 3.0), NEVER_HANG_S)
    assert not release.is_set()  # it answered while the endpoint still held the request
    _result_shape(result, "lm")
    assert result["ok"] is False and result["error"]


def _daytona(server: DaytonaStandIn, key: str) -> Settings:
    return Settings(
        sandbox_provider="daytona",
        daytona_api_key=key,
        daytona_api_url=server.api_url,
        daytona_target="standin",
    )


async def test_daytona_probe_lifecycle_with_good_credentials(
    daytona_standin: DaytonaStandIn,
) -> None:
    result = await probe_daytona(_daytona(daytona_standin, daytona_standin.api_key), 60.0)
    assert result["ok"] is True, result
    phases = result["preflight"]["phases"]
    assert [p for p in ("create", "execute_2", "cleanup") if phases[p]["ok"]] == [
        "create",
        "execute_2",
        "cleanup",
    ]


async def test_daytona_probe_with_bad_credentials(daytona_standin: DaytonaStandIn) -> None:
    result = await asyncio.wait_for(
        probe_daytona(_daytona(daytona_standin, "wrong-key-000"), 20.0), NEVER_HANG_S
    )
    _result_shape(result, "daytona")
    assert result["ok"] is False
    assert "create failed (auth)" in result["error"], result["error"]
    assert result["preflight"]["api_key_set"] is True
    assert "wrong-key-000" not in str(result)


def test_probes_refuse_identity_fields_and_junk_bodies(client: Client) -> None:
    answer = client.http.post("/api/v1/runtime/tests/daytona", json={"workspace_id": "evil"})
    assert answer.status_code == 422, answer.text
    assert answer.json()["code"] == "unsupported_identity_fields"
    junk = client.http.post("/api/v1/runtime/tests/lm", content=b"not json")
    assert junk.status_code == 422 and junk.json()["code"] == "invalid_request"
    assert client.http.post("/api/v1/runtime/tests/daytona", json={}).status_code == 200


@pytest.fixture
def quoting_endpoint() -> Iterator[int]:
    """An OpenAI-style endpoint that refuses every key and quotes it back, as some do."""
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            key = self.headers.get("authorization", "").removeprefix("Bearer ")
            body = json.dumps({"error": {"message": f"Incorrect API key provided: {key}."}})
            self.send_response(401)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body.encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


async def test_lm_probe_never_shows_a_plain_key_the_endpoint_quotes(quoting_endpoint: int) -> None:
    settings = _lm_settings(quoting_endpoint).model_copy(
        update={"dspy_lm_api_key": "plainsecret0123456789XYZ"}
    )
    Settings(dspy_lm_api_key="plainsecret0123456789XYZ")  # as each process builds its own
    result = await asyncio.wait_for(probe_lm(settings, 10.0), NEVER_HANG_S)
    assert result["ok"] is False and result["error"]
    assert "plainsecret0123456789XYZ" not in str(result), result
