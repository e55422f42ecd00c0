"""A DSPy callback that turns the agent's planning steps into events.

After each ReAct planning call it sends the thought as a ``reasoning`` chat event and an
``llm`` execution step, whose id becomes the parent of the tool steps that follow.
Tool events themselves come from the tool wrappers in ``doc_tools``.
"""

from __future__ import annotations

from typing import Any

from dspy.utils.callback import BaseCallback

from fleet_rlm.agent.doc_tools import DocumentTools
from fleet_rlm.runtime.frames import truncate
from fleet_rlm.runtime.turn import TurnContext

THOUGHT_LIMIT = 2000


def _active_span_id() -> str | None:
    try:
        import mlflow

        span = mlflow.get_current_active_span()
        return span.span_id if span is not None else None
    except Exception:
        return None


class TurnEventCallback(BaseCallback):
    def __init__(self, ctx: TurnContext, tools: DocumentTools) -> None:
        self.ctx = ctx
        self.tools = tools

    def on_module_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        if exception is not None or outputs is None:
            return
        thought = getattr(outputs, "next_thought", None)
        if thought is None:
            return
        tool = getattr(outputs, "next_tool_name", None)
        args = getattr(outputs, "next_tool_args", None)
        self.ctx.emitter.chat("reasoning", truncate(str(thought), THOUGHT_LIMIT), {"tool": tool})
        self.tools.parent_step = self.ctx.emitter.step(
            "llm",
            "plan",
            input={},
            output={"thought": truncate(str(thought), THOUGHT_LIMIT), "tool": tool, "args": args},
            span_id=_active_span_id(),
        )
