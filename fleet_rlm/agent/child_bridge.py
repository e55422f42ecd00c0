"""``ChildBridge``: a child run's line to its turn, from another process.

Through the session actor it draws on the turn's budget and sends the run's execution
steps (with ``depth`` and ``parent_id``, so viewers can draw nested lanes); it makes the
run's interpreter, its ``sub_rlm`` tool (a grandchild task at depth + 1) and the spans
of bridge callbacks; and it flushes the run's spans before the task returns.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import ray
from dspy.utils.callback import BaseCallback

from fleet_rlm.errors import FleetError, TurnCancelled
from fleet_rlm.observability.tracing import flush_traces, tracing_headers, tracing_ready
from fleet_rlm.runtime.budget import BudgetExceeded
from fleet_rlm.runtime.frames import truncate
from fleet_rlm.sandbox.interpreter import PoolInterpreter
from fleet_rlm.sandbox.protocol import ExecResult

if TYPE_CHECKING:
    from fleet_rlm.agent.rlm_child import ChildRequest

logger = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


class ChildBridge:
    def __init__(self, request: ChildRequest) -> None:
        self.request = request
        self.settings = request.settings
        self.text_limit = request.settings.event_text_limit
        self.traced = tracing_ready(request.settings) and bool(request.trace_headers)
        self.span_id: str | None = None
        self.plan_step: str | None = None
        self.repl_step: str | None = None
        self._entered = False

    # --- budget --------------------------------------------------------------------------

    def _budget(self, op: str, *args: Any) -> None:
        answer = ray.get(self.request.session.budget.remote(self.request.turn_index, op, *args))
        if answer["ok"]:
            return
        if answer["code"] == "cancelled":
            raise TurnCancelled("the turn was cancelled")
        raise BudgetExceeded(answer["message"], code=answer["code"])

    def enter(self) -> None:
        self._budget("enter_child", self.request.depth)
        self._entered = True

    def exit(self) -> None:
        if self._entered:
            self._entered = False
            ray.get(self.request.session.budget.remote(self.request.turn_index, "exit_child"))

    def check_lm(self) -> None:
        """The ``lm_guard`` check: cancelled, out of time or out of LM calls raise."""
        self._budget("check_lm")

    def charge_lm(self) -> None:
        """Count an LM call that starts (from the ``on_lm_start`` callback)."""
        self._budget("charge_lm")

    def check(self) -> None:
        self._budget("check")

    # --- events --------------------------------------------------------------------------

    def step(
        self,
        type_: str,
        label: str,
        *,
        parent_id: str | None = None,
        input: dict[str, Any] | None = None,
        output: dict[str, Any] | None = None,
    ) -> str:
        step_id = f"{self.request.turn_index}.d{self.request.depth}.{uuid.uuid4().hex[:8]}"
        step = {
            "id": step_id,
            "parent_id": parent_id
            or self.repl_step
            or self.plan_step
            or self.request.parent_step_id,
            "type": type_,
            "label": label,
            "depth": self.request.depth,
            "input": _jsonable(input or {}),
            "output": _jsonable(output or {}),
            "timestamp": time.time(),
            "span_id": self._current_span_id(),
        }
        self.request.session.child_step.remote(self.request.turn_index, step)
        return step_id

    def status(self, error: FleetError) -> None:
        payload = {"code": error.code, "depth": self.request.depth}
        self.request.session.child_chat.remote(
            self.request.turn_index, "status", error.message, payload
        )
        self.step(
            "output", "limit" if isinstance(error, BudgetExceeded) else "error", output=payload
        )

    def _current_span_id(self) -> str | None:
        if not self.traced:
            return None
        import mlflow

        span = mlflow.get_current_active_span()
        return span.span_id if span is not None else self.span_id

    # --- the interpreter's reporter ------------------------------------------------------

    def repl_started(self, code: str) -> None:
        self.repl_step = None
        self.repl_step = self.step(
            "repl", "execute", input={"code": truncate(code, self.text_limit)}
        )

    def repl_finished(self, result: ExecResult) -> None:
        output = {
            "kind": result.kind,
            "stdout": truncate(result.stdout, self.text_limit),
            "error": truncate(result.error or "", self.text_limit) or None,
            "truncated": result.truncated,
            "duration_ms": result.duration_ms,
        }
        self.step("output", result.kind, parent_id=self.repl_step, output=output)
        self.repl_step = None

    @contextlib.contextmanager
    def execute_span(self, code: str) -> Iterator[None]:
        """A span for one sandbox execute; bridge callbacks made during it nest under it."""
        if not self.traced:
            yield
            return
        import mlflow
        from mlflow.entities import SpanType

        with mlflow.start_span(name="sandbox.execute", span_type=SpanType.TOOL) as span:
            span.set_inputs({"code": truncate(code, self.text_limit)})
            yield

    @contextlib.contextmanager
    def tool_span(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Iterator[None]:
        if name.startswith("llm_query"):
            preview = truncate(str(args[0] if args else kwargs), self.text_limit)
            self.step("llm", name, input={"prompt": preview})
        if not self.traced:
            yield
            return
        import mlflow
        from mlflow.entities import SpanType

        with mlflow.start_span(name=name, span_type=SpanType.TOOL) as span:
            span.set_inputs({"args": _jsonable(args), "kwargs": _jsonable(kwargs)})
            yield

    # --- what the run is built from ------------------------------------------------------

    def interpreter(self) -> PoolInterpreter:
        owner = f"{self.request.key.run_id(self.request.turn_index)}:d{self.request.depth}"
        return PoolInterpreter(
            self.request.pool,
            owner,
            self.settings.sandbox_exec_timeout_s,
            self,
            self.check,
            depth=self.request.depth,
        )

    def sub_rlm_tool(self) -> Callable[..., str]:
        bridge = self

        def sub_rlm(query: str, context: str = "") -> str:
            """Hand a sub-task to a deeper recursive run over `context`; returns its answer."""
            return bridge.delegate(query, context)

        return sub_rlm

    def delegate(self, query: str, context: str) -> str:
        from fleet_rlm.agent.rlm_child import run_child_task

        depth = self.request.depth + 1
        if depth > self.settings.rlm_max_depth:
            error = BudgetExceeded(
                f"sub_rlm refused: depth {depth} is past the limit of"
                f" {self.settings.rlm_max_depth}; solve this part here",
                code="depth_exceeded",
            )
            self.status(error)
            return f"[depth_exceeded] {error.message}"
        step_id = self.step(
            "delegate", truncate(query, 120), input={"query": query, "context_chars": len(context)}
        )
        child = self.request.model_copy(
            update={
                "depth": depth,
                "query": query,
                "context": context,
                "parent_step_id": step_id,
                "trace_headers": tracing_headers() if self.traced else {},
            }
        )
        result = ray.get(run_child_task.remote(child))
        return result.answer

    def callback(self) -> BaseCallback:
        return _PlanSteps(self)

    def close(self) -> None:
        if self.traced:
            flush_traces()


class _PlanSteps(BaseCallback):
    """Counts the run's LM calls against the turn, and after each RLM action call sends
    an ``llm`` step with its reasoning and code."""

    def __init__(self, bridge: ChildBridge) -> None:
        self.bridge = bridge

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.bridge.charge_lm()

    def on_module_end(
        self, call_id: str, outputs: Any | None, exception: BaseException | None = None
    ) -> None:
        if exception is not None or outputs is None:
            return
        code = getattr(outputs, "code", None)
        reasoning = getattr(outputs, "reasoning", None)
        if code is None or reasoning is None:
            return
        limit = self.bridge.text_limit
        self.bridge.plan_step = None
        self.bridge.plan_step = self.bridge.step(
            "llm",
            "plan",
            parent_id=self.bridge.request.parent_step_id,
            output={
                "reasoning": truncate(str(reasoning), limit),
                "code": truncate(str(code), limit),
            },
        )
