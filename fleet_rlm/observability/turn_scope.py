"""Which turn this thread is working for, for callbacks that have no other way to know.

DSPy callbacks are process-wide (see ``callbacks``), so a callback that reports per turn
(PostHog) reads the turn from here. ``execute_turn`` and each child run open a scope;
outside one, ``current_scope()`` is None and such callbacks stay quiet about the turn.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

from fleet_rlm.identity import SessionKey


@dataclass(frozen=True)
class TurnScope:
    key: SessionKey
    turn_index: int
    depth: int = 0


_scope: contextvars.ContextVar[TurnScope | None] = contextvars.ContextVar(
    "fleet_rlm_turn_scope", default=None
)


@contextlib.contextmanager
def turn_scope(key: SessionKey, turn_index: int, depth: int = 0) -> Iterator[TurnScope]:
    scope = TurnScope(key, turn_index, depth)
    token = _scope.set(scope)
    try:
        yield scope
    finally:
        _scope.reset(token)


def current_scope() -> TurnScope | None:
    return _scope.get()
