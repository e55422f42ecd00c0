"""The ingress's side of MLflow: list a session's turn traces, and rate one of them.

``tracing`` writes one trace per turn, stamped with the identity tuple in the trace
metadata; this module reads those traces back for ``GET /api/v1/sessions/{id}/traces``
and logs feedback on them for ``POST /api/v1/traces/feedback``. Both look traces up by
that metadata only, so an identity never sees or rates another's traces.

``list_session_traces`` and ``log_feedback`` block on HTTP to the tracking server; the
routes run them through ``call_mlflow``, which puts them in a thread with a deadline and
turns a dead, slow or disabled MLflow into ``MlflowUnavailableError`` (503).

Every client here is built for ``MLFLOW_TRACKING_URI`` explicitly: the process-wide
tracking URI of ``mlflow.set_tracking_uri`` is not relied on.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from fleet_rlm.config import Settings
from fleet_rlm.errors import FleetError, ForbiddenError, NotFoundError
from fleet_rlm.identity import Principal, SessionKey
from fleet_rlm.observability.mlflow_runtime import apply_mlflow_client_env

if TYPE_CHECKING:  # mlflow is imported lazily: the ingress pays for it on first use only
    from mlflow.entities import Span, Trace, TraceInfo
    from mlflow.tracing.client import TracingClient

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The trace metadata ``tracing._tag`` writes on every turn's trace.
SESSION_KEY = "mlflow.trace.session"
USER_KEY = "mlflow.trace.user"
WORKSPACE_KEY = "fleet_rlm.workspace_id"
TURN_KEY = "fleet_rlm.turn_index"
# The attribute ``rlm_child._child_span`` sets on each child RLM run's span.
DEPTH_ATTRIBUTE = "fleet_rlm.depth"

FEEDBACK_NAME = "user_feedback"
EXPECTATION_NAME = "expected_response"

# Oldest turn first: MLflow's page token is an offset, so new turns only ever add pages at
# the end and a client paging through never sees a trace twice.
ORDER_BY = ["timestamp_ms ASC", "request_id ASC"]

# The whole of one route's MLflow work; each HTTP request within it is bounded too
# (MLFLOW_HTTP_REQUEST_TIMEOUT, see ``mlflow_runtime``).
CALL_TIMEOUT_S = 30.0
SPAN_BATCH = 10  # the most MLflow's batchGet takes at once
SPAN_READERS = 4


class MlflowUnavailableError(FleetError):
    """MLflow is disabled, not answering, or answering with errors."""

    code = "mlflow_unavailable"
    status = 503


class BadPageTokenError(FleetError):
    code = "invalid_request"
    status = 422


@dataclass(frozen=True)
class Delegation:
    """One child RLM run inside a turn's trace."""

    span_id: str
    parent_span_id: str | None
    depth: int
    name: str
    status: str  # the span's status: "ok", "error" or "unset" (still open)


@dataclass(frozen=True)
class TraceSummary:
    trace_id: str
    turn_index: int | None
    status: str  # the trace's state: "ok", "error", "in_progress" or "state_unspecified"
    start_time: str  # ISO 8601, UTC, milliseconds
    duration_ms: int | None  # None while the turn runs
    span_count: int
    delegations: list[Delegation] = field(default_factory=list)


@dataclass(frozen=True)
class TracePage:
    items: list[TraceSummary]
    next_page_token: str | None


@dataclass(frozen=True)
class Feedback:
    """A thumbs-up or -down on a trace, as the caller sent it."""

    trace_id: str
    value: bool
    comment: str | None = None
    expected_response: str | None = None


@dataclass(frozen=True)
class FeedbackLogged:
    trace_id: str
    session_id: str | None  # from the trace's metadata
    expectation_logged: bool


# -- running MLflow calls ------------------------------------------------------------------


def _unavailable(settings: Settings, what: str, reason: str) -> MlflowUnavailableError:
    return MlflowUnavailableError(
        f"could not {what}: MLflow at {settings.mlflow_tracking_uri} {reason}. Start it with"
        " `make mlflow-server` or point MLFLOW_TRACKING_URI at a running server, then retry"
    )


async def call_mlflow(
    settings: Settings, what: str, fn: Callable[..., T], *args: Any, timeout_s: float | None = None
) -> T:
    """Run the blocking ``fn(settings, *args)`` in a thread; never wait past the deadline.

    ``FleetError``s from ``fn`` pass through; any other failure means MLflow cannot be
    used now and becomes ``MlflowUnavailableError``. A call that overruns is abandoned
    (its thread ends at its own HTTP timeout).
    """
    if not settings.mlflow_enabled:
        raise MlflowUnavailableError(
            f"could not {what}: MLflow is disabled on this server (MLFLOW_ENABLED=false)."
            " Set MLFLOW_ENABLED=true and MLFLOW_TRACKING_URI to a running server"
        )
    apply_mlflow_client_env()
    deadline = CALL_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, settings, *args), deadline)
    except FleetError:
        raise
    except TimeoutError:
        logger.warning("MLflow did not answer within %.0f s; could not %s", deadline, what)
        raise _unavailable(settings, what, f"did not answer within {deadline:.0f} s") from None
    except Exception as exc:
        logger.warning("MLflow failed; could not %s: %s", what, exc)
        raise _unavailable(settings, what, f"failed ({_short(exc)})") from exc


def _short(exc: Exception, limit: int = 300) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error_code(exc: Exception) -> str | None:
    return getattr(exc, "error_code", None)


# -- listing -----------------------------------------------------------------------------


def identity_filter(key: SessionKey) -> str:
    """MLflow's search filter for the traces of exactly ``key``'s session."""
    clauses = [(SESSION_KEY, key.session_id), (USER_KEY, key.user_id)]
    clauses.append((WORKSPACE_KEY, key.workspace_id))
    for name, value in clauses:
        # The identity checks (``identity``, ``api.auth``) already keep quotes out; a quote
        # here would change the filter's meaning, so refuse rather than trust them blindly.
        if "'" in value or "\\" in value:
            raise FleetError(f"{name} {value!r} cannot go into an MLflow search filter")
    return " AND ".join(f"metadata.`{name}` = '{value}'" for name, value in clauses)


def list_session_traces(
    settings: Settings, key: SessionKey, limit: int, page_token: str | None
) -> TracePage:
    """One page of the session's turn traces, oldest turn first (blocking)."""
    from mlflow import MlflowClient
    from mlflow.tracing.client import TracingClient

    experiment = MlflowClient(settings.mlflow_tracking_uri).get_experiment_by_name(
        settings.mlflow_experiment
    )
    if experiment is None:  # no turn was ever traced on this server
        return TracePage([], None)
    client = TracingClient(tracking_uri=settings.mlflow_tracking_uri)
    try:
        found = client.search_traces(
            locations=[experiment.experiment_id],
            filter_string=identity_filter(key),
            max_results=limit,
            order_by=ORDER_BY,
            page_token=page_token,
            include_spans=False,
        )
    except Exception as exc:
        if page_token is not None and _error_code(exc) == "INVALID_PARAMETER_VALUE":
            raise BadPageTokenError(
                "page_token is not one this server issued; start again without it"
            ) from None
        raise
    spans = _spans_of(client, [trace.info.trace_id for trace in found])
    logger.debug("session %s: %d traces on this page", key.session_id, len(found))
    items = [summarize(trace.info, spans.get(trace.info.trace_id, [])) for trace in found]
    return TracePage(items, found.token or None)


def _spans_of(client: TracingClient, trace_ids: list[str]) -> dict[str, list[Span]]:
    """The spans of each trace, including traces some or all of whose spans never landed.

    MLflow's batch read (and ``search_traces(include_spans=True)``) silently leaves out a
    trace with fewer spans stored than its root process counted, and fails whole with a
    500 when one trace of the batch has none. Such a turn must still be listed, with what
    did land, so those traces are read one by one with ``allow_partial``.
    """
    found: dict[str, list[Span]] = {}
    batches = [trace_ids[i : i + SPAN_BATCH] for i in range(0, len(trace_ids), SPAN_BATCH)]
    with ThreadPoolExecutor(max_workers=SPAN_READERS, thread_name_prefix="trace-spans") as pool:
        for traces in pool.map(functools.partial(_complete, client), batches):
            found.update({t.info.trace_id: list(t.data.spans) for t in traces})
        partial = [tid for tid in trace_ids if tid not in found]
        landed = pool.map(functools.partial(_landed, client), partial)
        found.update(zip(partial, landed, strict=True))
    return found


def _complete(client: TracingClient, trace_ids: list[str]) -> list[Trace]:
    try:
        return client.store.batch_get_traces(trace_ids)
    except Exception as exc:
        logger.debug("batch read of traces %s failed, reading them one by one: %s", trace_ids, exc)
        return []


def _landed(client: TracingClient, trace_id: str) -> list[Span]:
    """What landed of a partial trace; nothing when MLflow has no span of it at all."""
    try:
        return list(client.store.get_trace(trace_id, allow_partial=True).data.spans)
    except Exception as exc:  # MLflow answers a trace without stored spans with a 500
        logger.warning("trace %s: no spans could be read (%s); listed without", trace_id, exc)
        return []


def summarize(info: TraceInfo, spans: list[Span]) -> TraceSummary:
    """A trace list item from an MLflow ``TraceInfo`` and the trace's spans."""
    return TraceSummary(
        trace_id=info.trace_id,
        turn_index=_int_or_none(info.trace_metadata.get(TURN_KEY)),
        status=_lower(info.state),
        start_time=_iso_ms(info.request_time),
        duration_ms=info.execution_duration,
        span_count=len(spans),
        delegations=delegations(spans),
    )


def delegations(spans: list[Span]) -> list[Delegation]:
    """The child RLM runs among a trace's spans, in the order they started."""
    children = [s for s in spans if s.get_attribute(DEPTH_ATTRIBUTE) is not None]
    children.sort(key=lambda s: s.start_time_ns)
    return [
        Delegation(
            span_id=s.span_id,
            parent_span_id=s.parent_id,
            depth=int(s.get_attribute(DEPTH_ATTRIBUTE)),
            name=s.name,
            status=_lower(s.status.status_code),
        )
        for s in children
    ]


def _lower(value: Any) -> str:
    return str(getattr(value, "value", value)).lower()


def _int_or_none(raw: str | None) -> int | None:
    try:
        return int(raw) if raw is not None else None
    except ValueError:
        return None


def _iso_ms(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- feedback ----------------------------------------------------------------------------


def check_owner(metadata: dict[str, str], who: Principal, trace_id: str) -> None:
    """Raise ``ForbiddenError`` unless the trace was made by a turn of ``who``."""
    owner = (metadata.get(WORKSPACE_KEY), metadata.get(USER_KEY))
    if owner != (who.workspace_id, who.user_id):
        raise ForbiddenError(
            f"trace {trace_id} is not a trace of one of your sessions; rate only the traces"
            " your own turns produced (GET /api/v1/sessions/{session_id}/traces lists them)"
        )


def log_feedback(settings: Settings, who: Principal, feedback: Feedback) -> FeedbackLogged:
    """Log ``feedback`` on its trace as MLflow assessments with ``who`` as the human source.

    The value goes in as the feedback ``user_feedback`` (the comment as its rationale), an
    expected response as the expectation ``expected_response``. Blocking.
    """
    from mlflow.entities import AssessmentSource, AssessmentSourceType, Expectation
    from mlflow.entities import Feedback as MlflowFeedback
    from mlflow.tracing.client import TracingClient  # what mlflow.log_feedback uses inside

    client = TracingClient(tracking_uri=settings.mlflow_tracking_uri)
    trace_id = feedback.trace_id
    try:
        info = client.get_trace_info(trace_id)
    except Exception as exc:
        if _error_code(exc) in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"):
            raise NotFoundError(
                f"no trace {trace_id}; take the trace_id from a turn's final event or from"
                " GET /api/v1/sessions/{session_id}/traces"
            ) from None
        raise
    check_owner(info.trace_metadata, who, trace_id)

    session_id = info.trace_metadata.get(SESSION_KEY)
    source = AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=who.user_id)
    context = {WORKSPACE_KEY: who.workspace_id, SESSION_KEY: session_id or ""}
    client.log_assessment(
        trace_id,
        MlflowFeedback(
            name=FEEDBACK_NAME,
            value=feedback.value,
            rationale=feedback.comment,
            source=source,
            metadata=context,
        ),
    )
    if feedback.expected_response is not None:
        client.log_assessment(
            trace_id,
            Expectation(
                name=EXPECTATION_NAME,
                value=feedback.expected_response,
                source=source,
                metadata=context,
            ),
        )
    logger.info(
        "session %s: feedback %s on trace %s by %s",
        session_id,
        "up" if feedback.value else "down",
        trace_id,
        who.user_id,
    )
    return FeedbackLogged(trace_id, session_id, feedback.expected_response is not None)
