"""With no MLflow server answering, a turn's trace context is a no-op, fast, and safe."""

from __future__ import annotations

import socket

from fleet_rlm.config import Settings
from fleet_rlm.identity import SessionKey
from fleet_rlm.observability.mlflow_runtime import mlflow_status
from fleet_rlm.observability.tracing import turn_trace


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_turn_runs_untraced_when_mlflow_is_down() -> None:
    settings = Settings(mlflow_tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    with turn_trace(settings, SessionKey("w", "u", "s"), 1, "hello") as handle:
        ran = True
    assert ran and handle.trace_id is None and handle.trace_url is None


def test_status_says_degraded_with_a_hint_when_down() -> None:
    settings = Settings(mlflow_tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    status = mlflow_status(settings)
    assert status["startup_status"] == "degraded"
    assert "make mlflow-server" in status["startup_error"]


def test_status_disabled() -> None:
    assert mlflow_status(Settings(mlflow_enabled=False))["startup_status"] == "disabled"


def test_pending_while_the_server_is_being_started() -> None:
    settings = Settings(mlflow_tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    status = mlflow_status(settings, {"state": "starting", "error": None})
    assert status["startup_status"] == "pending" and status["startup_error"] is None


def test_a_failed_start_says_why_and_what_to_do() -> None:
    settings = Settings(mlflow_tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    error = "the MLflow server did not start: exited with 1; run `make mlflow-server`"
    status = mlflow_status(settings, {"state": "failed", "error": error})
    assert status["startup_status"] == "degraded"
    assert status["startup_error"].startswith(error)


def test_version_comparison() -> None:
    from fleet_rlm.observability.mlflow_runtime import MlflowProbe, client_version

    assert MlflowProbe(True, "3.10.1").older_than_client()
    assert not MlflowProbe(True, client_version()).older_than_client()
    assert not MlflowProbe(True, "99.0.0").older_than_client()
    assert not MlflowProbe(True, None).older_than_client()  # a server that does not say
    assert not MlflowProbe(True, "not-a-version").older_than_client()
