"""Whether the MLflow tracking server answers, in the words of ``/api/v1/runtime/status``.

``mlflow_status`` asks ``<MLFLOW_TRACKING_URI>/health`` with a short timeout and never
raises: ``ready``, ``degraded`` (with ``startup_error`` saying what to do) or ``disabled``.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from fleet_rlm.config import Settings

PROBE_TIMEOUT_S = 1.5

# Tracing must never stall a turn: MLflow's client retries for minutes by default.
MLFLOW_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_USE_BATCH_SPAN_PROCESSOR": "false",
}


def apply_mlflow_client_env() -> None:
    for key, value in MLFLOW_CLIENT_ENV.items():
        os.environ.setdefault(key, value)


def is_http_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def mlflow_answers(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    if not is_http_uri(uri):
        return True
    try:
        return httpx.get(f"{uri.rstrip('/')}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def mlflow_status(settings: Settings) -> dict[str, Any]:
    base = {"enabled": settings.mlflow_enabled, "tracking_uri": settings.mlflow_tracking_uri}
    if not settings.mlflow_enabled:
        return {**base, "startup_status": "disabled", "startup_error": None}
    if mlflow_answers(settings.mlflow_tracking_uri):
        return {**base, "startup_status": "ready", "startup_error": None}
    hint = (
        f"no MLflow server answers at {settings.mlflow_tracking_uri}; run `make mlflow-server`"
        " (or set MLFLOW_TRACKING_URI, or MLFLOW_ENABLED=false); turns run untraced meanwhile"
    )
    return {**base, "startup_status": "degraded", "startup_error": hint}
