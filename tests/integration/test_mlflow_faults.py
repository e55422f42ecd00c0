"""MLflow under faults, on a second Serve app whose MLflow port this module owns.

In order: nothing on the port, then an older MLflow server on it, then the upgrade and
the current server, then that server killed in the middle of a turn. Through all of it
turns end normally, the status says what is wrong and what to do, and tracing comes
back on the first turn after the server does. Also: the background start-up says
``pending`` before ``ready``.
"""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray
from mlflow import MlflowClient

from fleet_rlm.config import Settings
from fleet_rlm.observability.diagnostics_actor import RuntimeDiagnostics
from fleet_rlm.observability.mlflow_server import MlflowServer
from tests.integration.mlflow_servers import (
    OLD_MLFLOW,
    OLD_VERSION,
    OldMlflowServer,
    answers,
    kill_hard,
    upgrade,
    wait_until,
)
from tests.integration.wsclient import Client, new_session, recv, send, until_terminal

pytestmark = pytest.mark.integration

PREFIX = "/faults"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fault_settings(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return settings.model_copy(
        update={
            "data_dir": tmp_path_factory.mktemp("faults"),
            "mlflow_tracking_uri": f"http://127.0.0.1:{_free_port()}",
            "ray_namespace": "fleet_rlm_faults",
        }
    )


@pytest.fixture(scope="module")
def fault_app(base_url: str, fault_settings: Settings) -> Iterator[Client]:
    from ray import serve

    from fleet_rlm.serve import FleetIngress

    serve.run(FleetIngress.bind(fault_settings), name="faults", route_prefix=PREFIX)
    url = f"{base_url}{PREFIX}"
    wait_until(lambda: httpx.get(f"{url}/ready", timeout=2).status_code == 200, 120, "ready")
    yield Client(url, fault_settings, user_id="alice")
    serve.delete("faults")


def _mlflow(client: Client) -> dict:
    answer = client.http.get("/api/v1/runtime/status")
    assert answer.status_code == 200, answer.text
    return answer.json()


async def _turn(client: Client, content: str, sid: str | None = None) -> dict:
    sid = sid or new_session("fault")
    async with client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": content})
        frames = await until_terminal(ws)
    assert frames[-1]["data"]["kind"] == "final", frames[-1]
    return frames[-1]["data"]


def _trace_lands(uri: str, trace_id: str) -> None:
    mlflow = MlflowClient(tracking_uri=uri)

    def has_root() -> bool:
        try:
            spans = mlflow.get_trace(trace_id).data.spans
        except Exception:
            return False
        return any(s.name == "respond" and s.parent_id is None for s in spans)

    wait_until(has_root, 30, f"trace {trace_id} with its respond root")


async def test_1_no_server_degraded_and_turns_run_untraced(fault_app: Client) -> None:
    status = _mlflow(fault_app)
    assert status["mlflow"]["startup_status"] == "degraded"
    assert "make mlflow-server" in status["mlflow"]["startup_error"]
    assert any(g.startswith("mlflow:") for g in status["guidance"])
    final = await _turn(fault_app, "hello while MLflow is down")
    assert final["payload"]["trace_id"] is None


@pytest.mark.skipif(
    not (OLD_MLFLOW / "mlflow").is_dir(), reason=f"{OLD_MLFLOW} missing: run `make test-deps`"
)
async def test_2_older_server_degraded_with_the_upgrade_hint(
    fault_app: Client, fault_settings: Settings
) -> None:
    old = OldMlflowServer(fault_settings)
    old.start()
    try:
        mlflow = _mlflow(fault_app)["mlflow"]
        assert mlflow["startup_status"] == "degraded", mlflow
        assert mlflow["server_version"] == OLD_VERSION
        error = mlflow["startup_error"]
        assert "older MLflow server" in error and OLD_VERSION in error
        for step in ("stop", "make mlflow-upgrade", "make mlflow-server"):
            assert step in error, error
        final = await _turn(fault_app, "hello beside an old MLflow")
        assert final["payload"]["trace_id"] is None  # not written into an older store
        refused = upgrade(fault_settings)  # the server still holds the port
        assert refused.returncode == 1 and "stop it first" in refused.stderr
    finally:
        old.stop()


def _schema_revision(store: Path) -> str:
    with sqlite3.connect(store) as db:
        return db.execute("select version_num from alembic_version").fetchone()[0]


async def test_3_upgrade_then_current_server_traces_again(
    fault_app: Client, fault_settings: Settings
) -> None:
    store = fault_settings.data_dir / "mlflow.sqlite3"
    before = _schema_revision(store) if store.exists() else None
    done = upgrade(fault_settings)
    assert done.returncode == 0, done.stderr
    if before is not None:  # the older server made the store: it is now at the head
        from alembic.script import ScriptDirectory
        from mlflow.store.db.utils import _get_alembic_config

        config = _get_alembic_config(f"sqlite:///{store}")
        assert _schema_revision(store) == ScriptDirectory.from_config(config).get_current_head()
    server = MlflowServer(fault_settings)
    server.start()
    try:
        assert _mlflow(fault_app)["mlflow"]["startup_status"] == "ready"
        final = await _turn(fault_app, "hello once MLflow is back")
        assert final["payload"]["trace_id"]  # the first turn after the server is back
        _trace_lands(fault_settings.mlflow_tracking_uri, final["payload"]["trace_id"])
    finally:
        server.stop()


async def test_4_server_killed_mid_turn_the_turn_ends_normally(
    fault_app: Client, fault_settings: Settings
) -> None:
    server = MlflowServer(fault_settings)
    server.start()
    sid = new_session("killed")
    fault_app.attach(sid, "notes", "a slow read\n")
    try:
        async with fault_app.chat() as ws:
            await send(ws, {"type": "message", "session_id": sid, "content": "SLOW read"})
            while (await recv(ws))["data"]["kind"] != "tool_call":
                pass
            kill_hard(server)  # between the two slow planning calls
            frames = await until_terminal(ws)
        final = frames[-1]["data"]
        assert final["kind"] == "final", final
        assert final["payload"]["answer"]
        assert _mlflow(fault_app)["mlflow"]["startup_status"] == "degraded"
        # The session goes on: the next turn runs, untraced.
        again = await _turn(fault_app, "and after the crash", sid)
        assert again["payload"]["trace_id"] is None
    finally:
        server.stop()


def test_background_start_is_pending_then_ready(
    base_url: str, fault_settings: Settings, tmp_path: Path
) -> None:
    from fleet_rlm.observability.mlflow_runtime import mlflow_status

    settings = fault_settings.model_copy(
        update={
            "data_dir": tmp_path,
            "mlflow_auto_start": True,
            "mlflow_tracking_uri": f"http://127.0.0.1:{_free_port()}",
        }
    )
    actor = RuntimeDiagnostics.remote(settings)
    try:
        first = ray.get(actor.mlflow_state.remote())
        assert first["state"] == "starting"
        assert mlflow_status(settings, first)["startup_status"] == "pending"
        wait_until(
            lambda: ray.get(actor.mlflow_state.remote())["state"] == "running", 120, "running"
        )
        assert mlflow_status(settings, ray.get(actor.mlflow_state.remote()))["startup_status"] == (
            "ready"
        )
        ray.get(actor.stop_mlflow.remote())
        assert not answers(settings.mlflow_tracking_uri)
    finally:
        ray.kill(actor)
