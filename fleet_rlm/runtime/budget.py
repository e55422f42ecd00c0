"""The limits of one turn's whole recursion tree: depth, LM calls, wall time, concurrency.

A ``TurnBudget`` lives in the session actor with the turn. The top-level agent uses it
directly; child runs in other processes reach it through the actor
(``SessionActor.budget``), passing the turn index they were leased. Every refusal is a
``BudgetExceeded`` with a code and a sentence the model can read as an observation.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from fleet_rlm.config import Settings
from fleet_rlm.errors import FleetError


class BudgetExceeded(FleetError):
    code = "budget_exceeded"
    status = 429


@dataclass(frozen=True)
class BudgetLimits:
    max_depth: int
    max_lm_calls: int
    wall_time_s: float
    max_concurrent: int

    @classmethod
    def from_settings(cls, settings: Settings) -> BudgetLimits:
        return cls(
            max_depth=settings.rlm_max_depth,
            max_lm_calls=settings.rlm_max_lm_calls,
            wall_time_s=settings.rlm_wall_time_s,
            max_concurrent=settings.rlm_max_concurrent_children,
        )


class TurnBudget:
    def __init__(self, limits: BudgetLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.wall_time_s
        self.lm_calls = 0
        self.children = 0
        self.running = 0
        self.cancelled = False
        self._lock = threading.Lock()
        self._slots: asyncio.Semaphore | None = None

    def _check_time(self) -> None:
        if self.cancelled:
            raise BudgetExceeded("the turn was cancelled", code="cancelled")
        if time.monotonic() > self.deadline:
            raise BudgetExceeded(
                f"the turn's wall-time limit of {self.limits.wall_time_s:g} s is reached;"
                " answer with what you have",
                code="wall_time_exceeded",
            )

    def check_lm(self) -> None:
        """Refuse the next LM call if the turn is out of calls or time (does not count it).

        This runs as an ``lm_guard`` check, which may run several times for one call (the
        scripted LM checks between the steps of a delay), so it must not count.
        """
        with self._lock:
            self._check_time()
            if self.lm_calls >= self.limits.max_lm_calls:
                raise BudgetExceeded(
                    f"the turn's limit of {self.limits.max_lm_calls} LM calls is used up;"
                    " answer with what you have",
                    code="lm_budget_exhausted",
                )

    def charge_lm(self) -> None:
        """Count one LM call that is starting (from an ``on_lm_start`` callback)."""
        with self._lock:
            self.lm_calls += 1

    def check(self) -> None:
        with self._lock:
            self._check_time()

    def check_depth(self, depth: int) -> None:
        with self._lock:
            self._check_time()
            if depth > self.limits.max_depth:
                raise BudgetExceeded(
                    f"delegating deeper than depth {self.limits.max_depth} is not allowed;"
                    " solve this part directly",
                    code="depth_exceeded",
                )

    async def enter_child(self, depth: int) -> None:
        """Admit a child at ``depth``, waiting for a concurrency slot until the deadline."""
        self.check_depth(depth)
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.max_concurrent)
        remaining = self.deadline - time.monotonic()
        try:
            await asyncio.wait_for(self._slots.acquire(), max(0.0, remaining))
        except TimeoutError:
            self._check_time()
            raise BudgetExceeded(
                "no child slot came free in time", code="wall_time_exceeded"
            ) from None
        with self._lock:
            self.children += 1
            self.running += 1

    def exit_child(self) -> None:
        with self._lock:
            self.running = max(0, self.running - 1)
        if self._slots is not None:
            self._slots.release()

    def snapshot(self) -> dict[str, object]:
        return {
            "lm_calls": self.lm_calls,
            "children": self.children,
            "running": self.running,
            "seconds_left": max(0.0, self.deadline - time.monotonic()),
            "cancelled": self.cancelled,
        }
