"""With no MLflow server answering, a turn's trace context is a no-op, fast, and safe."""

from __future__ import annotations

import socket
import time

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
    started = time.monotonic()
    with turn_trace(settings, SessionKey("w", "u", "s"), 1, "hello") as handle:
        ran = True
    assert ran and handle.trace_id is None and handle.trace_url is None
    assert time.monotonic() - started < 30  # bounded by the probe timeout, not retries


def test_status_says_degraded_with_a_hint_when_down() -> None:
    settings = Settings(mlflow_tracking_uri=f"http://127.0.0.1:{_closed_port()}")
    status = mlflow_status(settings)
    assert status["startup_status"] == "degraded"
    assert "make mlflow-server" in status["startup_error"]


def test_status_disabled() -> None:
    assert mlflow_status(Settings(mlflow_enabled=False))["startup_status"] == "disabled"
