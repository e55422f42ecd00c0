"""``execute_turn``: one user turn, run in the session actor's worker thread.

It builds the planner LM, opens the turn's MLflow trace, runs ``FleetAgent`` inside
``dspy.context`` (``dspy.configure`` may only be called from one thread), guards every LM
call against cancellation, and maps model failures to ``ModelError`` codes.
"""

from __future__ import annotations

import logging

import dspy

from fleet_rlm.agent.delegation import Delegation
from fleet_rlm.agent.doc_tools import DocumentTools, guarded_tool
from fleet_rlm.agent.fleet_agent import FleetAgent
from fleet_rlm.agent.lm import build_adapter, build_planner_lm, classify_model_error, lm_guard
from fleet_rlm.agent.turn_events import TurnEventCallback
from fleet_rlm.errors import FleetError
from fleet_rlm.observability.callbacks import dspy_callbacks
from fleet_rlm.observability.tracing import turn_trace
from fleet_rlm.observability.turn_scope import turn_scope
from fleet_rlm.runtime.budget import BudgetExceeded
from fleet_rlm.runtime.frames import truncate
from fleet_rlm.runtime.turn import TurnContext, TurnOutcome

logger = logging.getLogger(__name__)

ANSWER_EVENT_LIMIT = 4000


def _check_lm(ctx: TurnContext) -> None:
    """Before each of the top-level agent's LM calls: not cancelled, and within budget."""
    ctx.check()
    if ctx.turn.budget is not None:
        ctx.turn.budget.check_lm()


def _delegate_first(ctx: TurnContext, delegation: Delegation) -> str:
    """Delegate over a document too large for the planner before planning starts.

    It goes through ``dspy.Tool`` so that it is a tool call like any other: events,
    a TOOL span, cancellation checks.
    """
    document = delegation.large_document(ctx.turn.content)
    if document is None:
        return ""
    tool = dspy.Tool(guarded_tool(ctx, delegation.delegate_to_rlm))
    return str(tool(query=ctx.turn.content, document=document))


def _plan(ctx: TurnContext, agent: FleetAgent, tools: DocumentTools, findings: str) -> str:
    """Run the planner; map model failures to ``ModelError``.

    When a delegation already answered and only the planner's own output is unparseable
    (a weak model), the turn answers with the delegation's finding and says so in a
    ``status`` event, rather than failing a turn whose work is done.
    """
    turn = ctx.turn
    try:
        return agent.respond(turn.content, tools.catalogue(), findings)
    except FleetError:
        raise
    except Exception as exc:
        logger.info("session %s: turn %d model failure: %r", turn.key, turn.turn_index, exc)
        error = classify_model_error(exc)
        if error.code != "model_output_unparseable" or not findings.strip():
            raise error from exc
        ctx.emitter.chat(
            "status",
            "the planner's output could not be parsed; answering with the delegated finding",
            {"code": error.code, "depth": 0},
        )
        return findings


def execute_turn(ctx: TurnContext) -> TurnOutcome:
    turn, settings = ctx.turn, ctx.settings
    key = turn.key
    ctx.check()
    try:
        lm = build_planner_lm(settings)
    except FleetError:
        raise
    except Exception as exc:
        raise classify_model_error(exc) from exc
    tools = DocumentTools(ctx)
    callback = TurnEventCallback(ctx)
    with (
        turn_scope(key, turn.turn_index),
        turn_trace(settings, key, turn.turn_index, turn.content) as trace,
    ):
        ctx.emitter.set_trace(trace.trace_id, trace.trace_url)
        delegation = Delegation(ctx, callback, traced=trace.trace_id is not None)
        agent = FleetAgent(
            [
                *tools.tools(),
                guarded_tool(ctx, delegation.delegate_to_rlm),
                guarded_tool(ctx, delegation.delegate_batch),
            ],
            max_iters=settings.agent_max_iters,
        )
        ctx.emitter.chat("status", "thinking", {"phase": "planning"})
        try:
            with (
                lm_guard(lambda: _check_lm(ctx)),
                dspy.context(
                    lm=lm,
                    adapter=build_adapter(settings),
                    callbacks=dspy_callbacks(settings, callback),
                ),
            ):
                findings = _delegate_first(ctx, delegation)
                answer = _plan(ctx, agent, tools, findings)
        except BudgetExceeded as exc:
            ctx.emitter.chat("status", exc.message, {"code": exc.code, "depth": 0})
            raise
        ctx.check()
        ctx.emitter.step(
            "output",
            "answer",
            parent_id=callback.parent_step,
            output={"answer": truncate(answer, ANSWER_EVENT_LIMIT)},
        )
    return TurnOutcome(answer=answer, trace_id=trace.trace_id, trace_url=trace.trace_url)
