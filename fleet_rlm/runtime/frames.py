"""Builders for the frames PROTOCOL.md defines, and the redaction every frame passes.

A log entry is ``{"seq", "channel", "kind", "turn_index", "frame"}``: ``channel`` is
``chat`` (frames of ``/api/v1/ws/execution``) or ``execution`` (frames of
``/api/v1/ws/execution/events``). Both share one per-session ``seq``.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

from fleet_rlm import secret_values
from fleet_rlm.identity import SessionKey

CHAT = "chat"
EXECUTION = "execution"
CHAT_KINDS = frozenset(
    {
        "turn_started",
        "status",
        "reasoning",
        "tool_call",
        "tool_result",
        "assistant_token",
        "final",
        "error",
        "cancelled",
    }
)
TERMINAL_KINDS = frozenset({"final", "error", "cancelled"})
STEP_TYPES = frozenset({"llm", "tool", "repl", "delegate", "output"})

# Keys: "token" as a whole word part (access_token, x-auth-token) but not max_tokens.
_SECRET_KEY = re.compile(
    r"(^|[_-])token$|secret|api[_-]?key|passw(or)?d|authorization|credential", re.IGNORECASE
)
_SECRET_VALUE = re.compile(
    r"(?i)\b("
    r"bearer\s+[A-Za-z0-9._~+/=-]{12,}"
    r"|basic\s+[A-Za-z0-9+/]{12,}={0,2}"
    r"|sk-(?=[A-Za-z0-9_-]*[0-9])[A-Za-z0-9_-]{12,}"
    r"|eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+"
    r"|(?:password|passwd|secret|api[_-]?key|token)\s*[=:]\s*\S+"
    r")"
)
REDACTED = "[redacted]"


def redact(value: Any) -> Any:
    """Drop values under secret-looking keys and secret-looking strings, recursively."""
    if isinstance(value, dict):
        return {
            k: (REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) else redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _SECRET_VALUE.sub(REDACTED, secret_values.scrub(value, REDACTED))
    return value


def truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [{len(text) - limit} more characters]"


def iso_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def chat_event(
    key: SessionKey,
    seq: int,
    kind: str,
    *,
    turn_index: int | None,
    text: str = "",
    payload: dict[str, Any] | None = None,
    trace_id: str | None = None,
) -> dict[str, Any]:
    data = {
        "kind": kind,
        "text": redact(text),
        "payload": redact(payload or {}),
        "session_id": key.session_id,  # ids are never redacted: clients route by them
        "turn_index": turn_index,
        "seq": seq,
        "timestamp": iso_now(),
        "trace_id": trace_id,
    }
    return {"type": "event", "data": data}


def execution_started(
    key: SessionKey, seq: int, turn_index: int, trace_id: str | None
) -> dict[str, Any]:
    return {
        "type": "execution_started",
        "run_id": key.run_id(turn_index),
        "seq": seq,
        "workspace_id": key.workspace_id,
        "user_id": key.user_id,
        "session_id": key.session_id,
        "turn_index": turn_index,
        "trace_id": trace_id,
    }


def execution_step(
    key: SessionKey, seq: int, turn_index: int, step: dict[str, Any]
) -> dict[str, Any]:
    full = {
        "id": step["id"],
        "parent_id": step.get("parent_id"),
        "type": step["type"],
        "label": step.get("label", ""),
        "depth": step.get("depth", 0),
        "input": step.get("input", {}),
        "output": step.get("output", {}),
        "timestamp": step.get("timestamp", time.time()),
        "span_id": step.get("span_id"),
    }
    for part in ("label", "input", "output"):
        full[part] = redact(full[part])
    return {"type": "execution_step", "run_id": key.run_id(turn_index), "seq": seq, "step": full}


def execution_completed(
    key: SessionKey, seq: int, turn_index: int, status: str, duration_ms: int
) -> dict[str, Any]:
    return {
        "type": "execution_completed",
        "run_id": key.run_id(turn_index),
        "seq": seq,
        "summary": {"status": status, "duration_ms": duration_ms},
    }
