"""``PoolInterpreter``: a DSPy ``CodeInterpreter`` whose code runs in a pooled sandbox.

``dspy.RLM`` builds one per run through its ``interpreter_factory``. The interpreter
leases a sandbox from the ``SandboxPool`` actor on ``start`` and releases it on
``shutdown``. ``execute`` streams the run from the pool; every tool request the sandbox
makes (``llm_query``, ``llm_query_batched``, ``sub_rlm``, ...) is answered here, in the
process that owns the run, under its trace context. This is the host-callback bridge.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

import ray
from dspy.primitives.code_interpreter import CodeExecutionError, CodeInterpreterError, FinalOutput

from fleet_rlm.sandbox.protocol import ExecResult

logger = logging.getLogger(__name__)


class StepReporter(Protocol):
    """Where the interpreter reports its steps (``ChildBridge`` in a child run)."""

    def repl_started(self, code: str) -> None: ...

    def repl_finished(self, result: ExecResult) -> None: ...

    def tool_span(self, name: str, args: list[Any], kwargs: dict[str, Any]) -> Any: ...

    def execute_span(self, code: str) -> Any: ...


class PoolInterpreter:
    def __init__(
        self,
        pool: Any,
        owner: str,
        timeout_s: float,
        reporter: StepReporter,
        check: Callable[[], None],
        depth: int = 1,
    ) -> None:
        self.pool = pool
        self.owner = owner
        self.depth = depth
        self.timeout_s = timeout_s
        self.reporter = reporter
        self.check = check
        self.output_fields: list[dict[str, Any]] | None = None
        self.lease_id: str | None = None
        self._tools: dict[str, Callable[..., Any]] = {}

    @property
    def tools(self) -> dict[str, Callable[..., Any]]:
        return self._tools

    def start(self) -> None:
        if self.lease_id is not None:
            return
        answer = ray.get(self.pool.lease.remote(self.owner, self.depth))
        if not answer["ok"]:
            raise CodeInterpreterError(answer["message"])
        self.lease_id = answer["lease_id"]

    def execute(self, code: str, variables: dict[str, Any] | None = None) -> Any:
        self.check()
        self.start()
        variables = json.loads(json.dumps(variables or {}, default=str))
        self.reporter.repl_started(code)
        stream = self.pool.execute.options(num_returns="streaming").remote(
            self.lease_id, code, variables, list(self._tools), self.output_fields, self.timeout_s
        )
        result: ExecResult | None = None
        with self.reporter.execute_span(code):
            for ref in stream:
                message = ray.get(ref)
                if message["type"] == "tool_request":
                    self._answer(message)
                elif message["type"] == "done":
                    result = ExecResult(**message["result"])
        if result is None:
            raise CodeInterpreterError("the sandbox pool ended the run without a result")
        self.reporter.repl_finished(result)
        return self._outcome(result)

    def _answer(self, message: dict[str, Any]) -> None:
        name = message["name"]
        try:
            self.check()
            tool = self._tools.get(name)
            if tool is None:
                raise CodeInterpreterError(f"unknown tool {name!r}")
            args, kwargs = message.get("args", []), message.get("kwargs", {})
            # DSPy's tools take keyword arguments; the sandbox's code may pass positionals.
            named = inspect.signature(tool).bind(*args, **kwargs).arguments
            with self.reporter.tool_span(name, args, kwargs):
                value = tool(**named)
            json.dumps(value)
            error = None
        except Exception as exc:  # goes back into the sandbox as the tool's exception
            value, error = None, f"{type(exc).__name__}: {exc}"
        ray.get(self.pool.reply.remote(self.lease_id, message["id"], value, error))

    @staticmethod
    def _outcome(result: ExecResult) -> Any:
        if result.kind == "final":
            return FinalOutput(result.value)
        if result.kind == "result":
            text = result.stdout
            return text if text else None
        if result.kind == "syntax_error":
            raise SyntaxError(result.error)
        # An exception in the code, a blown limit or a dead sandbox: the run sees it and
        # goes on (the pool has already replaced a broken sandbox).
        raise CodeExecutionError(f"[{result.kind}] {result.error}")

    def shutdown(self) -> None:
        if self.lease_id is None:
            return
        lease, self.lease_id = self.lease_id, None
        try:
            ray.get(self.pool.release.remote(lease))
        except Exception:
            logger.warning("releasing sandbox lease %s failed", lease, exc_info=True)
