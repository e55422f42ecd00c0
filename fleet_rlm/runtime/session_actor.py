"""``SessionActor``: the detached, named Ray actor that owns one session.

It runs one turn at a time as a background task (so the turn outlives the socket that
started it), keeps the session's event log and serves the replicas' subscriptions by
long-poll (``wait_events``). When idle for ``SESSION_IDLE_TIMEOUT_S`` with nobody
subscribed, it passivates: its state is already in the store, so it simply exits, and
the next message or viewer re-creates it by name (see ``actors``).

A successor of an actor that died mid-turn finds that turn unfinished in the store and
closes it with an ``error`` event (``turn_lost``), continuing the sequence without a gap.

Methods answer dicts (``{"ok": False, "code", "message"}`` on refusal) rather than
raising, so that callers across processes need not unwrap Ray's exception wrappers.
``{"code": "passivating"}`` tells the caller to resolve the actor again and retry.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any

import ray

from fleet_rlm.config import Settings, apply_offline_env
from fleet_rlm.errors import FleetError, TurnCancelled
from fleet_rlm.identity import SessionKey
from fleet_rlm.runtime import frames
from fleet_rlm.runtime.budget import BudgetExceeded, BudgetLimits, TurnBudget
from fleet_rlm.runtime.event_log import EventLog
from fleet_rlm.runtime.turn import TurnContext, TurnEmitter, TurnOutcome, TurnState
from fleet_rlm.store import Store

logger = logging.getLogger(__name__)

PASSIVATING = {"ok": False, "code": "passivating", "message": "session is passivating; retry"}


def refusal(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "code": code, "message": message}


class SessionActor:
    def __init__(self, key: SessionKey, settings: Settings) -> None:
        apply_offline_env()
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.key = key
        self.settings = settings
        self.store = Store.from_settings(settings)
        self.log = EventLog(
            self.store, key, settings.session_event_buffer, self.store.last_seq(key)
        )
        self._turn: TurnState | None = None
        self._cancel_wakeup: asyncio.Event | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=4, thread_name_prefix=f"turn-{key.session_id}"
        )
        self._waiters = 0
        self._last_activity = time.monotonic()
        self._closing = False
        self._idle_task: asyncio.Task[None] | None = None
        self._recover_lost_turns()
        logger.info("session %s: actor up at seq %d", key, self.log.last_seq)

    # --- lifecycle ---------------------------------------------------------------------

    def _recover_lost_turns(self) -> None:
        for turn in self.store.unfinished_turns(self.key):
            logger.warning(
                "session %s: turn %d was lost with the previous actor; closing it",
                self.key,
                turn.turn_index,
            )
            state = TurnState(self.key, turn.turn_index, turn.content)
            state.trace_id = turn.trace_id
            self._finish(
                state,
                "error",
                "The session's worker stopped during this turn; send the message again.",
                {"code": "turn_lost"},
            )

    def _touch(self) -> None:
        self._last_activity = time.monotonic()
        if self._idle_task is None:
            self._idle_task = asyncio.get_running_loop().create_task(self._idle_watch())

    async def _idle_watch(self) -> None:
        timeout = self.settings.session_idle_timeout_s
        period = max(0.2, min(timeout / 4, 5.0))
        while True:
            await asyncio.sleep(period)
            idle_for = time.monotonic() - self._last_activity
            if self._turn is None and self._waiters == 0 and idle_for >= timeout:
                await self._passivate(idle_for)
                return

    async def _passivate(self, idle_for: float) -> None:
        self._closing = True
        logger.info(
            "session %s: idle %.0f s, passivating at seq %d",
            self.key,
            idle_for,
            self.log.last_seq,
        )
        self.store.dispose()
        ray.kill(ray.get_runtime_context().current_actor, no_restart=True)

    async def close(self) -> dict[str, Any]:
        """Stop accepting work (the session is being deleted); a running turn ends now with
        ``cancelled``, so that every viewer sees exactly one terminal event for it."""
        self._closing = True
        turn = self._turn
        if turn is not None:
            self._request_cancel(turn)
            self._finish(turn, "cancelled", "The session was deleted.", {"reason": "deleted"})
        return {"ok": True}

    def _request_cancel(self, turn: TurnState) -> None:
        """Stop a turn's whole tree: its thread, its children's budget, its sandboxes."""
        turn.cancel_requested.set()
        if turn.budget is not None:
            turn.budget.cancelled = True
        self._stop_sandboxes(turn)
        if self._cancel_wakeup is not None:
            self._cancel_wakeup.set()

    # --- queries -----------------------------------------------------------------------

    async def snapshot(self) -> dict[str, Any]:
        self._touch()
        if self._closing:
            return PASSIVATING
        running = self._turn.turn_index if self._turn else None
        return {"ok": True, "last_seq": self.log.last_seq, "running_turn": running}

    async def wait_events(self, after_seq: int, timeout_s: float) -> dict[str, Any]:
        """Long-poll: entries with ``seq > after_seq``, waiting up to ``timeout_s`` for one."""
        self._touch()
        if self._closing:
            return PASSIVATING
        self._waiters += 1
        try:
            entries = await self.log.wait(after_seq, timeout_s)
        finally:
            self._waiters -= 1
            self._last_activity = time.monotonic()
        return {"ok": True, "entries": entries, "last_seq": self.log.last_seq}

    async def read_events(self, after_seq: int, limit: int = 500) -> dict[str, Any]:
        self._touch()
        if self._closing:
            return PASSIVATING
        return {"ok": True, "entries": self.log.read(after_seq, limit)}

    # --- turns -------------------------------------------------------------------------

    async def start_turn(self, content: str, client_message_id: str | None) -> dict[str, Any]:
        self._touch()
        if self._closing:
            return PASSIVATING
        if self._turn is not None:
            return refusal(
                "turn_in_progress",
                f"turn {self._turn.turn_index} is still running; send after its final event"
                " or cancel it",
            )
        turn_index = self.store.next_turn_index(self.key)
        self.store.create_turn(self.key, turn_index, content, client_message_id)
        turn = TurnState(self.key, turn_index, content)
        turn.budget = TurnBudget(BudgetLimits.from_settings(self.settings))
        self._turn = turn
        self._cancel_wakeup = asyncio.Event()
        logger.info("session %s: turn %d started", self.key, turn_index)
        self._append_chat(turn, "turn_started", "", {"client_message_id": client_message_id})
        self.log.append(
            frames.EXECUTION,
            "execution_started",
            turn_index,
            lambda seq: frames.execution_started(self.key, seq, turn_index, turn.trace_id),
        )
        asyncio.get_running_loop().create_task(self._run(turn, self._cancel_wakeup))
        return {"ok": True, "turn_index": turn_index}

    async def cancel(self) -> dict[str, Any]:
        self._touch()
        turn = self._turn
        if turn is None or turn.closed:
            return refusal("no_turn_running", "no turn is running in this session")
        self._request_cancel(turn)
        logger.info("session %s: cancel requested for turn %d", self.key, turn.turn_index)
        return {"ok": True, "status": "ok", "turn_index": turn.turn_index}

    async def _run(self, turn: TurnState, cancel_wakeup: asyncio.Event) -> None:
        from fleet_rlm.agent.turn_program import execute_turn

        loop = asyncio.get_running_loop()
        emitter = TurnEmitter(turn, loop, self._append_chat, self._append_step)
        ctx = TurnContext(
            turn=turn,
            settings=self.settings,
            store=self.store,
            emitter=emitter,
            session=ray.get_runtime_context().current_actor,
        )
        work = loop.run_in_executor(self._executor, execute_turn, ctx)
        cancelled = loop.create_task(cancel_wakeup.wait())
        try:
            await asyncio.wait({work, cancelled}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                await self._await_grace(work)
                self._finish(turn, "cancelled", "The turn was cancelled.", {})
                return
            self._finish_from(turn, work)
        except Exception:  # the loop must survive whatever a turn does
            logger.exception("session %s: turn %d crashed", self.key, turn.turn_index)
            if not turn.closed:
                self._finish(turn, "error", "internal error", {"code": "internal_error"})
        finally:
            cancelled.cancel()

    async def _await_grace(self, work: asyncio.Future[TurnOutcome]) -> None:
        """Give the worker a moment to reach its next check and stop on its own."""
        try:
            await asyncio.wait_for(asyncio.shield(work), self.settings.cancel_grace_s)
        except (TimeoutError, Exception):
            pass

    def _finish_from(self, turn: TurnState, work: asyncio.Future[TurnOutcome]) -> None:
        exc = work.exception()
        if exc is None:
            outcome = work.result()
            payload = {"answer": outcome.answer, "trace_id": outcome.trace_id or turn.trace_id}
            if outcome.trace_url or turn.trace_url:
                payload["trace_url"] = outcome.trace_url or turn.trace_url
            self._finish(turn, "final", outcome.answer, payload)
        elif isinstance(exc, TurnCancelled) or turn.cancel_requested.is_set():
            self._finish(turn, "cancelled", "The turn was cancelled.", {})
        elif isinstance(exc, FleetError):
            self._finish(turn, "error", exc.message, {"code": exc.code})
        else:
            logger.error("session %s: turn %d failed: %r", self.key, turn.turn_index, exc)
            self._finish(
                turn, "error", f"internal error: {type(exc).__name__}", {"code": "internal_error"}
            )

    def _finish(self, turn: TurnState, kind: str, text: str, payload: dict[str, Any]) -> None:
        """Append the terminal pair, record the turn, and free the session for the next one."""
        if turn.closed:
            return
        status = {"final": "completed", "error": "error", "cancelled": "cancelled"}[kind]
        self._append_chat(turn, kind, text, payload, force=True)
        turn.closed = True
        self.log.append(
            frames.EXECUTION,
            "execution_completed",
            turn.turn_index,
            lambda seq: frames.execution_completed(
                self.key,
                seq,
                turn.turn_index,
                {"completed": "ok"}.get(status, status),
                turn.duration_ms,
            ),
        )
        self.store.finish_turn(
            self.key,
            turn.turn_index,
            status,
            answer=payload.get("answer"),
            error_code=payload.get("code"),
            trace_id=turn.trace_id,
        )
        if self.settings.posthog_enabled:  # queued, never sent from here
            from fleet_rlm.observability.analytics import capture_turn

            capture_turn(
                self.settings,
                self.key,
                turn.turn_index,
                status=status,
                latency_s=turn.duration_ms / 1000,
                trace_id=turn.trace_id,
                error_code=payload.get("code"),
                content=turn.content,
                answer=payload.get("answer"),
            )
        if self._turn is turn:
            self._turn = None
        self._last_activity = time.monotonic()
        logger.info(
            "session %s: turn %d ended %s in %d ms",
            self.key,
            turn.turn_index,
            status,
            turn.duration_ms,
        )

    # --- child runs (called from their processes) ---------------------------------------

    def _live_turn(self, turn_index: int) -> TurnState | None:
        turn = self._turn
        if turn is None or turn.turn_index != turn_index or turn.closed:
            return None
        return turn

    async def budget(self, turn_index: int, op: str, *args: Any) -> dict[str, Any]:
        """A child's budget call: ``enter_child``, ``exit_child``, ``check_lm``, ``charge_lm``
        or ``check``; refusals carry the limit's code."""
        turn = self._live_turn(turn_index)
        if turn is None or turn.budget is None or turn.cancel_requested.is_set():
            return refusal("cancelled", "the turn has ended or was cancelled")
        try:
            if op == "enter_child":
                await turn.budget.enter_child(int(args[0]))
            elif op == "exit_child":
                turn.budget.exit_child()
            elif op == "charge_lm":
                turn.budget.charge_lm()
            elif op == "check_lm":
                turn.budget.check_lm()
            elif op == "check":
                turn.budget.check()
            else:
                return refusal("unknown_op", f"no budget operation {op!r}")
        except BudgetExceeded as exc:
            return refusal(exc.code, exc.message)
        except FleetError as exc:
            return refusal(exc.code, exc.message)
        return {"ok": True}

    async def child_step(self, turn_index: int, step: dict[str, Any]) -> None:
        turn = self._live_turn(turn_index)
        if turn is not None:
            self._append_step(turn, step)

    async def child_chat(
        self, turn_index: int, kind: str, text: str, payload: dict[str, Any]
    ) -> None:
        turn = self._live_turn(turn_index)
        if turn is not None:
            self._append_chat(turn, kind, text, payload)

    def _stop_sandboxes(self, turn: TurnState) -> None:
        """Stop the cancelled turn's sandboxes, if the pool exists, without waiting."""
        from fleet_rlm.sandbox.pool import POOL_NAME

        try:
            pool = ray.get_actor(POOL_NAME, namespace=self.settings.ray_namespace)
        except ValueError:
            return
        pool.cancel_owner.remote(self.key.run_id(turn.turn_index) + ":")

    # --- sinks (run on the loop) -------------------------------------------------------

    def _append_chat(
        self,
        turn: TurnState,
        kind: str,
        text: str,
        payload: dict[str, Any],
        force: bool = False,
    ) -> None:
        if turn.closed and not force:
            return
        self.log.append(
            frames.CHAT,
            kind,
            turn.turn_index,
            lambda seq: frames.chat_event(
                self.key,
                seq,
                kind,
                turn_index=turn.turn_index,
                text=text,
                payload=payload,
                trace_id=turn.trace_id,
            ),
        )

    def _append_step(self, turn: TurnState, step: dict[str, Any]) -> None:
        if turn.closed:
            return
        self.log.append(
            frames.EXECUTION,
            "execution_step",
            turn.turn_index,
            lambda seq: frames.execution_step(self.key, seq, turn.turn_index, step),
        )
