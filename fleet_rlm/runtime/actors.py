"""Finding a session's actor by name, creating it when absent, and calling it safely.

Any replica on any node resolves the same actor from the identity tuple. A call that
meets a dead or passivating actor resolves the name again (which creates a successor
that recovers from the store) and retries, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from fleet_rlm.config import Settings
from fleet_rlm.errors import FleetError
from fleet_rlm.identity import SessionKey
from fleet_rlm.runtime.session_actor import SessionActor

logger = logging.getLogger(__name__)

RETRIES = 8
_DEAD = (RayActorError, ActorDiedError, ActorUnavailableError)
SessionActorRemote = ray.remote(SessionActor)


class SessionUnavailableError(FleetError):
    code = "session_unavailable"
    status = 503


class SessionActors:
    """Per-process cache of session actor handles."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._handles: dict[SessionKey, Any] = {}

    def _create(self, key: SessionKey) -> Any:
        return SessionActorRemote.options(
            name=key.actor_name,
            namespace=self.settings.ray_namespace,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=0,
            max_concurrency=1000,
        ).remote(key, self.settings)

    def handle(self, key: SessionKey) -> Any:
        handle = self._handles.get(key)
        if handle is None:
            handle = self._create(key)
            self._handles[key] = handle
        return handle

    def existing(self, key: SessionKey) -> Any | None:
        """The live actor of ``key`` if there is one; never creates."""
        try:
            return ray.get_actor(key.actor_name, namespace=self.settings.ray_namespace)
        except ValueError:
            return None

    def forget(self, key: SessionKey) -> None:
        self._handles.pop(key, None)

    async def call(
        self, key: SessionKey, method: str, *args: Any, inflight: list[Any] | None = None
    ) -> dict[str, Any]:
        """Call ``method`` on the session's actor, re-resolving it after a death.

        ``inflight``, when given, holds the pending call's ``ObjectRef`` while it runs, so
        that the caller can ``ray.cancel`` it (a cancelled await does not cancel it).
        """
        for attempt in range(RETRIES):
            handle = self.handle(key)
            ref = getattr(handle, method).remote(*args)
            if inflight is not None:
                inflight[:] = [ref]
            try:
                answer = await ref
            except _DEAD as exc:
                logger.info(
                    "session %s: actor gone (%s); resolving again",
                    key.session_id,
                    type(exc).__name__,
                )
                self.forget(key)
                await asyncio.sleep(0.05 * attempt)
                continue
            if answer.get("code") == "passivating":
                self.forget(key)
                await asyncio.sleep(0.2 * (attempt + 1))
                continue
            return answer
        raise SessionUnavailableError(
            f"session {key.session_id} could not be reached after {RETRIES} attempts;"
            " retry shortly, and check `ray status` if it persists"
        )

    async def kill(self, key: SessionKey) -> None:
        handle = self.existing(key)
        self.forget(key)
        if handle is None:
            return
        try:
            await handle.close.remote()
        except _DEAD:
            pass
        ray.kill(handle, no_restart=True)
