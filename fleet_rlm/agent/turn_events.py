"""A DSPy callback that turns the agent's steps into chat events and execution steps.

- after each ReAct planning call: a ``reasoning`` event and an ``llm`` step, whose id
  becomes the parent of the tool step that follows;
- around each tool call (``finish`` excluded): ``tool_call`` / ``tool_result`` events and
  a ``tool`` step. Hooking the tool's callbacks, not the function, means a call whose
  arguments fail validation is reported too.

DSPy logs and swallows exceptions raised in callbacks, so nothing here can break a turn.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from dspy.utils.callback import BaseCallback

from fleet_rlm.runtime.frames import truncate
from fleet_rlm.runtime.turn import TurnContext

THOUGHT_LIMIT = 2000
RESULT_LIMIT = 2000
SILENT_TOOLS = frozenset({"finish"})


def active_span_id() -> str | None:
    """The current MLflow span's id, if MLflow is loaded and a span is open."""
    mlflow = sys.modules.get("mlflow")
    if mlflow is None:
        return None
    try:
        span = mlflow.get_current_active_span()
        return span.span_id if span is not None else None
    except Exception:
        return None


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _bounded(args: Any, limit: int = RESULT_LIMIT) -> Any:
    """Tool arguments for an event: each string cut to ``limit`` characters."""
    if isinstance(args, dict):
        return {k: _bounded(v, limit) for k, v in args.items()}
    if isinstance(args, list):
        return [_bounded(v, limit) for v in args[:50]]
    return truncate(args, limit) if isinstance(args, str) else args


class TurnEventCallback(BaseCallback):
    def __init__(self, ctx: TurnContext) -> None:
        self.ctx = ctx
        self.parent_step: str | None = None
        self._tools: dict[str, tuple[str, dict[str, Any]]] = {}

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        if self.ctx.turn.budget is not None:
            self.ctx.turn.budget.charge_lm()

    def on_module_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        thought = getattr(outputs, "next_thought", None) if exception is None else None
        if thought is None:
            return
        tool = getattr(outputs, "next_tool_name", None)
        args = getattr(outputs, "next_tool_args", None)
        text = truncate(str(thought), THOUGHT_LIMIT)
        self.ctx.emitter.chat("reasoning", text, {"tool": tool})
        self.parent_step = self.ctx.emitter.step(
            "llm",
            "plan",
            output={"thought": text, "tool": tool, "args": _bounded(_jsonable(args))},
            span_id=active_span_id(),
        )

    def on_tool_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        name = getattr(instance, "name", "tool")
        if name in SILENT_TOOLS:
            return
        args = _bounded(_jsonable(inputs.get("kwargs", inputs)))
        self._tools[call_id] = (name, args)
        self.ctx.emitter.chat("tool_call", name, {"tool": name, "args": args})

    def on_tool_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        started = self._tools.pop(call_id, None)
        if started is None:
            return
        name, args = started
        ok = exception is None
        text = truncate(str(outputs) if ok else f"error: {exception}", RESULT_LIMIT)
        self.ctx.emitter.chat("tool_result", text, {"tool": name, "ok": ok})
        self.ctx.emitter.step(
            "tool",
            name,
            parent_id=self.parent_step,
            input={"args": args},
            output={"ok": ok, "text": text},
            span_id=active_span_id(),
        )
