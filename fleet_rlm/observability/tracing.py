"""One MLflow trace per turn, rooted at the agent's ``respond`` span.

``turn_trace`` checks on entry whether MLflow answers, so tracing comes back on the first
turn after the server does; when it does not, the turn runs untraced. Tracing problems
are logged and never fail a turn.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from fleet_rlm.config import Settings
from fleet_rlm.identity import SessionKey
from fleet_rlm.observability.callbacks import install_mlflow
from fleet_rlm.observability.mlflow_runtime import (
    TRACE_CHECK_TIMEOUT_S,
    apply_mlflow_client_env,
    mlflow_answers,
    tracing_possible,
)

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_configured_for: tuple[str, str] | None = None
_experiment_id: str | None = None


@dataclass
class TraceHandle:
    trace_id: str | None = None
    trace_url: str | None = None


def _configure(settings: Settings) -> str | None:
    """Point this process at the tracking server and turn on DSPy autologging, once."""
    global _configured_for, _experiment_id
    import mlflow

    wanted = (settings.mlflow_tracking_uri, settings.mlflow_experiment)
    with _lock:
        if _configured_for != wanted:
            apply_mlflow_client_env()
            mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
            _experiment_id = _experiment(settings.mlflow_experiment)
            mlflow.set_experiment(experiment_id=_experiment_id)
            install_mlflow()
            _configured_for = wanted
        return _experiment_id


def _experiment(name: str) -> str:
    """The experiment's id, creating it if need be, safe when many processes race to.

    ``mlflow.set_experiment(name)`` is not: in MLflow 3.17 the processes that lose the race
    to create it return without making it active, and their traces land in ``Default``.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # another process made it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def trace_url(settings: Settings, experiment_id: str | None, trace_id: str) -> str | None:
    uri = settings.mlflow_tracking_uri
    if not uri.startswith(("http://", "https://")) or experiment_id is None:
        return None
    return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/traces?selectedEvaluationId={trace_id}"


def tracing_ready(settings: Settings) -> bool:
    """True when this process can trace now (MLflow answers and is configured here)."""
    return _enabled(settings) is not None


def tracing_headers() -> dict[str, str]:
    """W3C trace-context headers for the current span, to hand to another process."""
    import mlflow

    try:
        return dict(mlflow.tracing.get_tracing_context_headers_for_http_request())
    except Exception as exc:
        logger.debug("no trace context to pass on: %s", exc)
        return {}


def _enabled(settings: Settings) -> str | None:
    if not tracing_possible(settings):
        return None
    try:
        return _configure(settings)
    except Exception as exc:  # a broken tracking server must not fail the turn
        logger.warning("MLflow configuration failed, turn runs untraced: %s", exc)
        return None


@contextlib.contextmanager
def turn_trace(
    settings: Settings, key: SessionKey, turn_index: int, message: str
) -> Iterator[TraceHandle]:
    handle = TraceHandle()
    experiment_id = _enabled(settings)
    if experiment_id is None:
        _set_tracing(False)
        logger.info(
            "session %s: turn %d runs untraced (MLflow unavailable)", key.session_id, turn_index
        )
        yield handle
        return
    import mlflow
    from mlflow.entities import SpanType

    _set_tracing(True)
    try:
        with mlflow.start_span(name="respond", span_type=SpanType.AGENT) as span:
            span.set_inputs({"message": message})
            span.set_attribute("fleet_rlm.pid", os.getpid())
            handle.trace_id = span.trace_id
            handle.trace_url = trace_url(settings, experiment_id, span.trace_id)
            _tag(key, turn_index)
            yield handle
    finally:
        # Before the terminal event: a client that opens trace_url at once sees it whole
        # (MLflow exports spans as they end, the root last). This is most of what tracing
        # costs a turn; bench/RESULTS.md has the figures.
        flush_traces()


def _tag(key: SessionKey, turn_index: int) -> None:
    import mlflow

    extra = {"fleet_rlm.workspace_id": key.workspace_id, "fleet_rlm.turn_index": str(turn_index)}
    try:
        mlflow.update_current_trace(
            tags=extra,
            metadata={
                "mlflow.trace.session": key.session_id,
                "mlflow.trace.user": key.user_id,
                **extra,
            },
        )
    except Exception as exc:
        logger.warning("session %s: could not tag trace: %s", key.session_id, exc)


_tracing_on: bool | None = None


def _set_tracing(on: bool) -> None:
    """Switch MLflow's tracing on or off for this process, only when it changes."""
    global _tracing_on
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or _tracing_on is on:  # never imported: nothing to switch, no cost
        return
    try:
        mlflow.tracing.enable() if on else mlflow.tracing.disable()
        _tracing_on = on
    except Exception as exc:
        logger.debug("toggling MLflow tracing failed: %s", exc)


FLUSH_WAIT_S = 60.0
FLUSH_SLICE_S = 2.0


def flush_traces(wait_s: float = FLUSH_WAIT_S) -> None:
    """Send this process's finished spans now (MLflow drops them at exit otherwise), waiting
    at most ``wait_s``: a server that went away mid-turn must not hold the answer."""
    import mlflow

    def flush() -> None:
        try:
            mlflow.flush_trace_async_logging()
        except Exception as exc:
            logger.warning("flushing MLflow traces failed: %s", exc)

    worker = threading.Thread(target=flush, name="mlflow-flush", daemon=True)
    worker.start()
    deadline = time.monotonic() + wait_s
    worker.join(min(FLUSH_SLICE_S, wait_s))
    while worker.is_alive() and time.monotonic() < deadline:
        # A busy server is worth waiting for; one that stopped answering is not.
        if not mlflow_answers(mlflow.get_tracking_uri(), TRACE_CHECK_TIMEOUT_S):
            logger.warning("MLflow stopped answering; going on (the trace may be partial)")
            return
        worker.join(min(FLUSH_SLICE_S, max(0.0, deadline - time.monotonic())))
    if worker.is_alive():
        logger.warning(
            "MLflow did not take the spans within %.0f s; going on (the trace may be partial)",
            wait_s,
        )
