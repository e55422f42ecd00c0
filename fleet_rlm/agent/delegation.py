"""``delegate_to_rlm`` and ``delegate_batch``: the top-level agent's way to recurse.

Each delegation becomes a child task in another Ray worker (``rlm_child``), given the
turn's trace context, depth 1, the session actor (for budget and events) and the
sandbox pool. A batch runs its children in parallel under the same budget. The agent's
thread waits for them in short steps so that a cancel stops them promptly.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from fleet_rlm.agent.rlm_child import ChildRequest, ChildResult, run_child_task
from fleet_rlm.agent.turn_events import TurnEventCallback, active_span_id
from fleet_rlm.errors import TurnCancelled
from fleet_rlm.observability.tracing import tracing_headers
from fleet_rlm.runtime.budget import BudgetExceeded
from fleet_rlm.runtime.frames import truncate
from fleet_rlm.runtime.turn import TurnContext
from fleet_rlm.sandbox.pool import get_pool

logger = logging.getLogger(__name__)

WAIT_STEP_S = 0.25
MAX_BATCH = 16


class Delegation:
    def __init__(self, ctx: TurnContext, callback: TurnEventCallback, traced: bool) -> None:
        self.ctx = ctx
        self.callback = callback
        self.traced = traced

    def _context(self, document: str, context: str) -> str:
        if document:
            doc = self.ctx.store.get_document(self.ctx.turn.key, document)
            if doc is None or doc.text is None:
                names = self.ctx.store.document_names(self.ctx.turn.key)
                raise ValueError(f"no document named {document!r}; attached: {names or 'none'}")
            return doc.text
        if context:
            return context
        names = self.ctx.store.document_names(self.ctx.turn.key)
        if len(names) == 1:  # the usual case: delegate over the one attached document
            doc = self.ctx.store.get_document(self.ctx.turn.key, names[0])
            return doc.text if doc and doc.text else ""
        return ""

    def large_document(self, message: str) -> str | None:
        """The attached document this turn should start by delegating over, if any.

        A document over ``DELEGATE_THRESHOLD_CHARS`` does not fit the planner's prompt, so
        a question about it (named in the message, or the only one attached) goes to a
        recursive run first, whatever the planner would pick: small models rarely pick it.
        """
        threshold = self.ctx.settings.delegate_threshold_chars
        if threshold <= 0:
            return None
        docs = self.ctx.store.list_documents(self.ctx.turn.key, 100, None)
        large = [d for d in docs if d.chars > threshold]
        named = [d for d in large if d.name.lower() in message.lower()]
        if named:
            return named[0].name
        return large[0].name if len(docs) == 1 and large else None

    def delegate_to_rlm(
        self, query: str, document: str = "", context: str = "", **_ignored: Any
    ) -> str:
        """Hand `query` to a recursive language model that writes and runs Python over a large
        text: the attached document named `document` (or the `context` you give). Use it when
        the answer needs more text than you can read. Returns the sub-model's answer."""
        return self._run([query], self._context(document, context))[0]

    def delegate_batch(self, queries: list[str], document: str = "", **_ignored: Any) -> list[str]:
        """Like delegate_to_rlm for several independent `queries` over the same document, run
        in parallel. Returns one answer per query, in order."""
        if not isinstance(queries, list) or not queries:
            raise ValueError("queries must be a non-empty list of strings")
        return self._run([str(q) for q in queries[:MAX_BATCH]], self._context(document, ""))

    def _run(self, queries: list[str], context: str) -> list[str]:
        ctx = self.ctx
        ctx.check()
        budget = ctx.turn.budget
        if budget is not None:
            try:
                budget.check_depth(1)
            except BudgetExceeded as exc:
                ctx.emitter.chat("status", exc.message, {"code": exc.code, "depth": 1})
                return [f"[{exc.code}] {exc.message}"] * len(queries)
        pool = get_pool(ctx.settings)
        headers = tracing_headers() if self.traced else {}
        requests = []
        for query in queries:
            step_id = ctx.emitter.step(
                "delegate",
                truncate(query, 120),
                parent_id=self.callback.parent_step,
                input={"query": query, "context_chars": len(context)},
                span_id=active_span_id(),
            )
            requests.append(
                ChildRequest(
                    key=ctx.turn.key,
                    turn_index=ctx.turn.turn_index,
                    depth=1,
                    query=query,
                    context=context,
                    parent_step_id=step_id,
                    trace_headers=headers,
                    settings=ctx.settings,
                    session=ctx.session,
                    pool=pool,
                )
            )
        refs = [run_child_task.remote(request) for request in requests]
        results = self._wait(refs)
        return [result.answer for result in results]

    def _wait(self, refs: list[Any]) -> list[ChildResult]:
        pending = list(refs)
        while pending:
            try:
                self.ctx.check()
            except TurnCancelled:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=WAIT_STEP_S)
        return ray.get(refs)
