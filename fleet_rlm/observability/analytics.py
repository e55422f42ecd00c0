"""PostHog product analytics: one event per LM generation and one per turn, off by default.

With ``POSTHOG_ENABLED=true`` and ``POSTHOG_API_KEY`` set (``analytics_enabled``):

- ``PosthogCallback``, installed through the callback registry (``callbacks``), sends a
  ``$ai_generation`` event for every LM call made inside a turn scope (``turn_scope``):
  model, latency, token counts, success, the MLflow trace id and the parent span id,
  with the input messages and output choices redacted and truncated.
- ``capture_turn``, called by the session actor when a turn's terminal event is sent,
  sends one ``$ai_trace`` event: status, latency, trace id, model, error code.

Nothing here may slow or fail a turn. Events go to the posthog client's own bounded
background queue (never ``sync_mode``); a dead or hanging host only fills that queue, and
events that do not fit are dropped. Every failure is swallowed and logged at WARNING
once per kind and process (then at DEBUG). With analytics off, ``posthog`` is never
imported and nothing is contacted. The client is one per process (per host and key),
made on first use and flushed, within a bound, at exit (``shutdown``).
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dspy.utils.callback import BaseCallback

from fleet_rlm.config import Settings
from fleet_rlm.identity import SessionKey
from fleet_rlm.observability.posthog_client import send, warn_once
from fleet_rlm.observability.turn_scope import TurnScope, current_scope
from fleet_rlm.runtime.frames import redact, truncate

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

GENERATION_EVENT = "$ai_generation"
TURN_EVENT = "$ai_trace"
MAX_MESSAGES = 20  # the last messages of a prompt that are sent
MAX_CHOICES = 5
_LM_SPAN_TYPES = frozenset({"LLM", "CHAT_MODEL"})


def analytics_enabled(settings: Settings) -> bool:
    """True when ``POSTHOG_ENABLED`` is on and a project key is set."""
    return bool(settings.posthog_enabled and (settings.posthog_api_key or "").strip())


# --- what an event carries ------------------------------------------------------------


def _plain(value: Any) -> Any:
    """``value`` as JSON data (anything else becomes its ``str``)."""
    return json.loads(json.dumps(value, default=str))


def _bounded(value: Any, limit: int) -> Any:
    """Redacted, then every string cut to ``limit`` characters (redacting first means a
    secret cut in two is still found)."""
    return _cut(redact(_plain(value)), limit)


def _cut(value: Any, limit: int) -> Any:
    if isinstance(value, str):
        return truncate(value, limit)
    if isinstance(value, dict):
        return {k: _cut(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v, limit) for v in value]
    return value


def _mlflow_ids() -> tuple[str | None, str | None, str | None]:
    """(trace id, this LM call's span id, its parent span id) from MLflow, if loaded.

    MLflow's DSPy callback may already have opened the LM call's own span when this
    callback runs; then that span is this generation and its parent is the parent.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return None, None, None
    try:
        trace_id = mlflow.get_active_trace_id()
        span = mlflow.get_current_active_span()
        if span is None or span.span_id is None:
            return trace_id, None, None
        if str(span.span_type) in _LM_SPAN_TYPES:
            return trace_id, span.span_id, span.parent_id
        return trace_id, None, span.span_id
    except Exception:
        return None, None, None


def _input_messages(inputs: dict[str, Any], limit: int) -> list[Any]:
    messages = inputs.get("messages")
    if not messages:
        prompt = inputs.get("prompt")
        messages = [{"role": "user", "content": prompt}] if prompt else []
    return [_bounded(m, limit) for m in list(messages)[-MAX_MESSAGES:]]


def _output_choices(outputs: Any, limit: int) -> list[dict[str, Any]]:
    items = outputs if isinstance(outputs, list) else [outputs]
    choices = []
    for item in items[:MAX_CHOICES]:
        text = item.get("text", item) if isinstance(item, dict) else item
        choices.append({"role": "assistant", "content": _bounded(text, limit)})
    return choices


def _token_count(usage: Any, *names: str) -> int | None:
    for name in names:
        value = usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _scope_properties(scope: TurnScope, trace_id: str | None) -> dict[str, Any]:
    key = scope.key
    return {
        # PostHog groups LLM events by trace; without MLflow the turn's run id stands in.
        "$ai_trace_id": trace_id or key.run_id(scope.turn_index),
        "$ai_session_id": key.session_id,
        "trace_id": trace_id,
        "session_id": key.session_id,
        "workspace_id": key.workspace_id,
        "turn_index": scope.turn_index,
        "depth": scope.depth,
    }


# --- per generation -------------------------------------------------------------------


@dataclass
class _Call:
    scope: TurnScope
    started: float
    model: str | None
    messages: list[Any]
    trace_id: str | None
    span_id: str | None
    parent_id: str | None
    history: list[Any] | None
    last_entry: Any


class PosthogCallback(BaseCallback):
    """A DSPy callback that sends one ``$ai_generation`` event per LM call of a turn.

    Calls outside a turn scope (a sweep, a probe) are not reported. DSPy swallows what a
    callback raises, and this one catches everything itself as well.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._calls: dict[str, _Call] = {}
        self._lock = threading.Lock()

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        scope = current_scope()
        if scope is None:
            return
        try:
            trace_id, span_id, parent_id = _mlflow_ids()
            history = getattr(instance, "history", None)
            history = history if isinstance(history, list) else None
            call = _Call(
                scope=scope,
                started=time.monotonic(),
                model=getattr(instance, "model", None),
                messages=_input_messages(inputs, self.settings.event_text_limit),
                trace_id=trace_id,
                span_id=span_id,
                parent_id=parent_id,
                history=history,
                last_entry=history[-1] if history else None,
            )
        except Exception as exc:
            warn_once("generation", "session %s: PostHog generation skipped (%r)", scope.key, exc)
            return
        with self._lock:
            self._calls[call_id] = call

    def on_lm_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        with self._lock:
            call = self._calls.pop(call_id, None)
        if call is None:
            return
        try:
            properties = self._properties(call_id, call, outputs, exception)
        except Exception as exc:
            warn_once(
                "generation", "session %s: PostHog generation skipped (%r)", call.scope.key, exc
            )
            return
        send(self.settings, call.scope.key, GENERATION_EVENT, properties)

    def _properties(
        self, call_id: str, call: _Call, outputs: Any, exception: BaseException | None
    ) -> dict[str, Any]:
        limit = self.settings.event_text_limit
        entry = _history_entry(call, outputs) if exception is None else None
        usage = entry.get("usage") if isinstance(entry, dict) else None
        model = call.model
        properties = {
            **_scope_properties(call.scope, call.trace_id),
            "$ai_span_id": call.span_id or call_id,
            "$ai_span_name": "lm",
            "$ai_parent_id": call.parent_id,
            "$ai_model": model,
            "$ai_provider": model.split("/", 1)[0] if model and "/" in model else None,
            "$ai_latency": round(time.monotonic() - call.started, 3),
            "$ai_input_tokens": _token_count(usage, "prompt_tokens", "input_tokens"),
            "$ai_output_tokens": _token_count(usage, "completion_tokens", "output_tokens"),
            "$ai_is_error": exception is not None,
            "$ai_input": call.messages,
            "$ai_output_choices": [] if exception is not None else _output_choices(outputs, limit),
        }
        if exception is not None:
            properties["$ai_error"] = _bounded(f"{type(exception).__name__}: {exception}", limit)
        return properties


def _history_entry(call: _Call, outputs: Any) -> dict[str, Any] | None:
    """The LM history entry this call added (it holds the usage), if one can be found.

    Entries newer than the one seen at the start are searched, newest first, for the one
    with these outputs; another thread's call on the same LM cannot be taken for it.
    """
    if not call.history:
        return None
    newer = []
    for entry in reversed(call.history[-8:]):
        if entry is call.last_entry:
            break
        newer.append(entry)
    for entry in newer:
        if isinstance(entry, dict) and entry.get("outputs") == outputs:
            return entry
    return None


# --- per turn -------------------------------------------------------------------------


def capture_turn(
    settings: Settings,
    key: SessionKey,
    turn_index: int,
    *,
    status: str,
    latency_s: float,
    trace_id: str | None,
    error_code: str | None = None,
    model: str | None = None,
    content: str | None = None,
    answer: str | None = None,
) -> None:
    """Queue the turn's ``$ai_trace`` event (``status``: completed, error or cancelled)."""
    if not analytics_enabled(settings):
        return
    try:
        if model is None:
            from fleet_rlm.agent.lm import describe_models

            model = describe_models(settings)["planner"]
        limit = settings.event_text_limit
        properties = {
            **_scope_properties(TurnScope(key, turn_index), trace_id),
            "$ai_span_name": "turn",
            "$ai_latency": round(latency_s, 3),
            "$ai_is_error": status == "error",
            "$ai_error": error_code,
            "$ai_input_state": _bounded(content, limit) if content is not None else None,
            "$ai_output_state": _bounded(answer, limit) if answer is not None else None,
            "status": status,
            "model": model,
            "error_code": error_code,
        }
    except Exception as exc:
        warn_once("turn", "session %s: PostHog turn event skipped (%r)", key, exc)
        return
    send(settings, key, TURN_EVENT, properties)
