"""Whether MLflow can take traces now, in the words of ``/api/v1/runtime/status``.

``probe_mlflow`` asks the tracking server's ``/version`` (``/health`` when that has no
answer) with a short timeout, over one keep-alive client, and never raises.
``mlflow_status`` turns a probe, and what the process that starts MLflow says of its
start-up (``diagnostics_actor``), into ``startup_status``:

- ``disabled``  MLFLOW_ENABLED=false;
- ``pending``   the server is being started and does not answer yet;
- ``ready``     it answers, and its version is not older than this client's;
- ``degraded``  anything else, with ``startup_error`` saying what to do. An older server
  on the port is degraded too: its store may have an older schema, and traces written
  by this client may not land.

Tracing asks ``tracing_possible`` on every turn's entry, so it recovers on the first turn
after the server comes back.
"""

from __future__ import annotations

import importlib.metadata
import os
import threading
from dataclasses import dataclass
from typing import Any

import httpx
from packaging.version import InvalidVersion, Version

from fleet_rlm.config import Settings

PROBE_TIMEOUT_S = 1.5

# MLflow's client retries for minutes by default; these keep a dead server from stalling
# a turn (the turn's flush is bounded too, see tracing) while a busy one, writing the spans
# of twenty turns at once into SQLite, still gets them all: a 5 s timeout without retries
# lost spans here under that load.
MLFLOW_CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_USE_BATCH_SPAN_PROCESSOR": "false",
}
# The per-turn check: long enough for a busy server, short enough for a hung one.
TRACE_CHECK_TIMEOUT_S = 5.0

UPGRADE_HINT = (
    "stop that server, run `make mlflow-upgrade` (upgrades the local store's schema),"
    " then `make mlflow-server`"
)


def apply_mlflow_client_env() -> None:
    for key, value in MLFLOW_CLIENT_ENV.items():
        os.environ.setdefault(key, value)


def is_http_uri(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def client_version() -> str:
    return importlib.metadata.version("mlflow")


@dataclass(frozen=True)
class MlflowProbe:
    answers: bool
    version: str | None = None  # the server's, when it says

    def older_than_client(self) -> bool:
        if self.version is None:
            return False
        try:
            return Version(self.version) < Version(client_version())
        except InvalidVersion:
            return False


_http_lock = threading.Lock()
_http: httpx.Client | None = None


def _client() -> httpx.Client:
    """One keep-alive client per process: a new one costs about 30 ms (its TLS context),
    and every turn probes."""
    global _http
    with _http_lock:
        if _http is None:
            _http = httpx.Client(timeout=PROBE_TIMEOUT_S)
        return _http


def probe_mlflow(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> MlflowProbe:
    if not is_http_uri(uri):  # a local file store: always there
        return MlflowProbe(answers=True)
    base = uri.rstrip("/")
    http = _client()
    try:
        answer = http.get(f"{base}/version", timeout=timeout_s)  # one request per turn
        if answer.status_code == 200 and answer.text.strip():
            return MlflowProbe(answers=True, version=answer.text.strip())
        healthy = http.get(f"{base}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return MlflowProbe(answers=False)
    return MlflowProbe(answers=healthy)


def mlflow_answers(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    return probe_mlflow(uri, timeout_s).answers


def tracing_possible(settings: Settings) -> bool:
    """True when a turn may trace now: enabled, answering, and not an older server."""
    if not settings.mlflow_enabled:
        return False
    probe = probe_mlflow(settings.mlflow_tracking_uri, TRACE_CHECK_TIMEOUT_S)
    return probe.answers and not probe.older_than_client()


def _older_server_error(settings: Settings, probe: MlflowProbe) -> str:
    return (
        f"an older MLflow server ({probe.version}) holds {settings.mlflow_tracking_uri}; this"
        f" client is {client_version()}: {UPGRADE_HINT}; turns run untraced meanwhile"
    )


def _down_error(settings: Settings, startup: dict[str, Any] | None) -> str:
    uri = settings.mlflow_tracking_uri
    if startup and startup.get("error"):
        return f"{startup['error']}; turns run untraced meanwhile"
    return (
        f"no MLflow server answers at {uri}; run `make mlflow-server` (or set"
        " MLFLOW_TRACKING_URI, or MLFLOW_ENABLED=false); turns run untraced meanwhile"
    )


def mlflow_status(settings: Settings, startup: dict[str, Any] | None = None) -> dict[str, Any]:
    """The status's ``mlflow`` object. ``startup``: ``RuntimeDiagnostics.mlflow_state()``."""
    base = {
        "enabled": settings.mlflow_enabled,
        "tracking_uri": settings.mlflow_tracking_uri,
        "client_version": client_version(),
        "server_version": None,
    }
    if not settings.mlflow_enabled:
        return {**base, "startup_status": "disabled", "startup_error": None}
    probe = probe_mlflow(settings.mlflow_tracking_uri)
    base["server_version"] = probe.version
    if probe.answers and probe.older_than_client():
        return {
            **base,
            "startup_status": "degraded",
            "startup_error": _older_server_error(settings, probe),
        }
    if probe.answers:
        return {**base, "startup_status": "ready", "startup_error": None}
    if startup and startup.get("state") == "starting":
        return {**base, "startup_status": "pending", "startup_error": None}
    return {**base, "startup_status": "degraded", "startup_error": _down_error(settings, startup)}
