"""One recursive RLM run (a "child"), as a Ray task in its own worker process.

The parent passes everything explicitly in a ``ChildRequest``: the trace context (W3C
headers from MLflow), the depth, the turn whose budget it draws on (a lease on the
session actor's ``TurnBudget``), the session actor's handle for events and the sandbox
pool's handle. The child restores the trace context, runs ``dspy.RLM`` whose interpreter
executes through the pool, answers the sandbox's ``llm_query`` / ``sub_rlm`` callbacks
itself (a ``sub_rlm`` launches a grandchild the same way, at depth + 1), flushes its
spans and returns. Limits end a branch with an observation, never a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from typing import Any

import dspy
import ray
from dspy.primitives.code_interpreter import CodeInterpreterError
from pydantic import BaseModel, ConfigDict

from fleet_rlm.agent.child_bridge import ChildBridge
from fleet_rlm.agent.lm import build_adapter, build_delegate_lm, classify_model_error, lm_guard
from fleet_rlm.config import Settings, apply_offline_env
from fleet_rlm.errors import FleetError, TurnCancelled
from fleet_rlm.identity import SessionKey
from fleet_rlm.observability.callbacks import dspy_callbacks
from fleet_rlm.observability.turn_scope import turn_scope
from fleet_rlm.runtime.budget import BudgetExceeded
from fleet_rlm.runtime.frames import truncate
from fleet_rlm.sandbox.protocol import SandboxError

logger = logging.getLogger(__name__)


class ChildRequest(BaseModel):
    """What a parent hands a child task; it crosses a process boundary."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    key: SessionKey
    turn_index: int
    depth: int
    query: str
    context: str
    parent_step_id: str | None
    trace_headers: dict[str, str]
    settings: Settings
    session: Any
    pool: Any


class ChildResult(BaseModel):
    ok: bool
    answer: str
    code: str | None = None
    depth: int


class ChildSignature(dspy.Signature):
    """Answer `query` using `context`, which may be far too large to read at once: explore it
    with Python, use llm_query on pieces for meaning, and sub_rlm for a sub-task that needs
    its own recursive run."""

    context: str = dspy.InputField()
    query: str = dspy.InputField()
    answer: str = dspy.OutputField()


@contextlib.contextmanager
def _child_span(bridge: ChildBridge) -> Iterator[None]:
    if not bridge.traced:
        yield
        return
    import mlflow
    from mlflow.entities import SpanType

    with mlflow.tracing.set_tracing_context_from_http_request_headers(bridge.request.trace_headers):
        with mlflow.start_span(
            name=f"rlm_child depth={bridge.request.depth}", span_type=SpanType.AGENT
        ) as span:
            span.set_inputs(
                {"query": bridge.request.query, "context_chars": len(bridge.request.context)}
            )
            span.set_attribute("fleet_rlm.pid", os.getpid())
            span.set_attribute("fleet_rlm.depth", bridge.request.depth)
            bridge.span_id = span.span_id
            yield


def run_child(request: ChildRequest) -> ChildResult:
    """Run one child in this process (the task body; also callable in-process for benchmarks)."""
    apply_offline_env()
    bridge = ChildBridge(request)
    try:
        with turn_scope(request.key, request.turn_index, request.depth), _child_span(bridge):
            return _run(bridge)
    finally:
        bridge.close()


def _run(bridge: ChildBridge) -> ChildResult:
    request = bridge.request
    depth = request.depth
    try:
        bridge.enter()
    except BudgetExceeded as exc:
        bridge.status(exc)
        return ChildResult(
            ok=False, answer=f"[{exc.code}] {exc.message}", code=exc.code, depth=depth
        )
    try:
        lm = build_delegate_lm(request.settings)
        rlm = dspy.RLM(
            ChildSignature,
            max_iters=request.settings.rlm_max_iters,
            max_llm_calls=request.settings.rlm_max_lm_calls,
            tools=[bridge.sub_rlm_tool()],
            sub_lm=lm,
            interpreter_factory=bridge.interpreter,
        )
        with (
            lm_guard(bridge.check_lm),
            dspy.context(
                lm=lm,
                adapter=build_adapter(request.settings),
                callbacks=dspy_callbacks(request.settings, bridge.callback()),
            ),
        ):
            prediction = rlm(context=request.context, query=request.query)
        answer = str(prediction.answer)
        bridge.step("output", "answer", output={"answer": truncate(answer, bridge.text_limit)})
        return ChildResult(ok=True, answer=answer, depth=depth)
    except BudgetExceeded as exc:
        bridge.status(exc)
        return ChildResult(
            ok=False, answer=f"[{exc.code}] {exc.message}", code=exc.code, depth=depth
        )
    except TurnCancelled:
        return ChildResult(ok=False, answer="[cancelled]", code="cancelled", depth=depth)
    except CodeInterpreterError as exc:  # no sandbox to be had: the branch ends here
        error = SandboxError(f"{exc}", code="sandbox_unavailable")
        bridge.status(error)
        return ChildResult(
            ok=False, answer=f"[{error.code}] {error.message}", code=error.code, depth=depth
        )
    except Exception as exc:
        error = exc if isinstance(exc, FleetError) else classify_model_error(exc)
        logger.warning(
            "session %s: child at depth %d failed: %s", request.key.session_id, depth, error.message
        )
        bridge.status(error)
        return ChildResult(
            ok=False, answer=f"[{error.code}] {error.message}", code=error.code, depth=depth
        )
    finally:
        bridge.exit()


@ray.remote(num_cpus=0, max_retries=0)
def run_child_task(request: ChildRequest) -> ChildResult:
    return run_child(request)


def new_step_id(turn_index: int, depth: int) -> str:
    return f"{turn_index}.d{depth}.{uuid.uuid4().hex[:8]}"
