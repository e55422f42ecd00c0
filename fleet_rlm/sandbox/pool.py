"""``SandboxPool``: the detached, named actor through which every sandbox is used.

It creates sandboxes (keeping ``SANDBOX_WARM_MIN`` ready), leases one to one owner at a
time, health-checks it before each lease, replaces one that broke, reaps idle ones and
leases whose owner vanished, and never holds more than ``SANDBOX_MAX_TOTAL``.

``execute`` is a streaming generator: it yields the sandbox's tool requests as they
come (the caller answers each with ``reply``) and finally ``{"type": "done", "result"}``.
So the host that owns the lease, not the pool, runs ``llm_query`` and ``sub_rlm``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from fleet_rlm.config import Settings, apply_offline_env
from fleet_rlm.sandbox.protocol import ExecResult, Sandbox, SandboxProvider, SandboxSpec

logger = logging.getLogger(__name__)

POOL_NAME = "sandbox_pool"
REAP_PERIOD_S = 5.0


@dataclass
class Lease:
    lease_id: str
    owner: str
    sandbox: Sandbox | None
    leased_at: float = field(default_factory=time.monotonic)
    replies: dict[int, asyncio.Future[Any]] = field(default_factory=dict)


def build_provider(settings: Settings) -> SandboxProvider:
    if settings.sandbox_provider == "daytona":
        from fleet_rlm.sandbox.daytona import DaytonaProvider

        return DaytonaProvider(settings)
    from fleet_rlm.sandbox.limits import SandboxLimits
    from fleet_rlm.sandbox.local import LocalProvider

    # Under the system temp folder: every ancestor of a sandbox's directory must be
    # traversable by the unprivileged user it runs as.
    base = settings.sandbox_dir or Path(tempfile.gettempdir()) / "fleet-rlm-sandboxes"
    return LocalProvider(SandboxLimits.from_settings(settings), base)


class SandboxPool:
    def __init__(self, settings: Settings) -> None:
        apply_offline_env()
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.settings = settings
        self.provider = build_provider(settings)
        self.max_total = settings.sandbox_max_total
        self.idle: list[tuple[Sandbox, float]] = []
        self.leases: dict[str, Lease] = {}
        self.creating = 0
        self.granting = 0
        self.counts = {"created": 0, "closed": 0, "replaced": 0, "reaped": 0, "leases": 0}
        self.high_water = 0
        self._changed = asyncio.Condition()
        self._background: asyncio.Task[None] | None = None
        logger.info("sandbox pool up: provider=%s max=%d", self.provider.name, self.max_total)

    # --- bookkeeping --------------------------------------------------------------------

    @property
    def total(self) -> int:
        leased = sum(1 for lease in self.leases.values() if lease.sandbox is not None)
        return len(self.idle) + leased + self.creating

    def _start_background(self) -> None:
        if self._background is None:
            self._background = asyncio.get_running_loop().create_task(self._maintain())

    async def _create(self) -> Sandbox:
        """Create one sandbox; the caller has already counted it in ``creating``."""
        try:
            sandbox = await self.provider.create(SandboxSpec())
            self.counts["created"] += 1
            return sandbox
        finally:
            self.creating -= 1

    async def _close(self, sandbox: Sandbox) -> None:
        try:
            await sandbox.close()
        except Exception:
            logger.exception("closing sandbox %s failed", sandbox.sandbox_id)
        self.counts["closed"] += 1

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _maintain(self) -> None:
        """Keep the warm minimum; reap idle sandboxes and leases whose owner is gone."""
        while True:
            try:
                await self._warm()
                await self._reap()
            except Exception:
                logger.exception("sandbox pool maintenance failed")
            await asyncio.sleep(REAP_PERIOD_S)

    async def _warm(self) -> None:
        while (
            len(self.idle) + self.creating < self.settings.sandbox_warm_min
            and self.total < self.max_total
        ):
            self.creating += 1
            sandbox = await self._create()
            self.idle.append((sandbox, time.monotonic()))
            await self._notify()

    async def _reap(self) -> None:
        now = time.monotonic()
        keep, extra = [], []
        for sandbox, since in self.idle:
            stale = now - since > self.settings.sandbox_idle_reap_s
            if stale and len(keep) >= self.settings.sandbox_warm_min:
                extra.append(sandbox)
            else:
                keep.append((sandbox, since))
        self.idle = keep
        overdue = self.settings.rlm_wall_time_s + 120
        for lease in list(self.leases.values()):
            if now - lease.leased_at > overdue:
                logger.warning(
                    "reclaiming lease %s of %s (owner gone?)", lease.lease_id, lease.owner
                )
                await self._drop_lease(lease, reason="reaped")
        for sandbox in extra:
            self.counts["reaped"] += 1
            await self._close(sandbox)
        if extra:
            await self._notify()

    # --- leases -------------------------------------------------------------------------

    def _cap(self, depth: int) -> int:
        """How many leases may be active when one at ``depth`` is granted.

        A run holds its sandbox while it waits for a deeper run, so each level below
        keeps one sandbox it alone may take: the deepest runs (which cannot recurse)
        always get one eventually, and so every level makes progress.
        """
        reserved = max(0, self.settings.rlm_max_depth - max(depth, 1))
        return max(1, self.max_total - reserved)

    async def lease(self, owner: str, depth: int = 1) -> dict[str, Any]:
        """A sandbox for ``owner``, waiting up to ``SANDBOX_LEASE_TIMEOUT_S`` for one."""
        self._start_background()
        deadline = time.monotonic() + self.settings.sandbox_lease_timeout_s
        self.granting += 1
        try:
            sandbox = await self._take(deadline, self._cap(depth))
        finally:
            self.granting -= 1
        if sandbox is None:
            return {
                "ok": False,
                "code": "sandbox_pool_exhausted",
                "message": f"all {self.max_total} sandboxes are busy;"
                " retry, or raise SANDBOX_MAX_TOTAL",
            }
        lease = Lease(f"lease-{uuid.uuid4().hex[:12]}", owner, sandbox)
        self.leases[lease.lease_id] = lease
        self.counts["leases"] += 1
        self.high_water = max(self.high_water, self.total)
        logger.debug("lease %s -> %s for %s", lease.lease_id, sandbox.sandbox_id, owner)
        return {"ok": True, "lease_id": lease.lease_id, "sandbox_id": sandbox.sandbox_id}

    async def _take(self, deadline: float, cap: int | None = None) -> Sandbox | None:
        cap = self.max_total if cap is None else cap
        while True:
            # Leases held plus those being granted alongside this one (``granting``
            # includes this call).
            busy = len(self.leases) + max(0, self.granting - 1)
            while self.idle and busy < cap:
                sandbox, _ = self.idle.pop()
                if await sandbox.healthy():
                    return sandbox
                self.counts["replaced"] += 1
                await self._close(sandbox)
            if self.total < self.max_total and busy < cap:
                self.creating += 1
                return await self._create()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            async with self._changed:
                try:
                    await asyncio.wait_for(self._changed.wait(), remaining)
                except TimeoutError:
                    return None

    async def release(self, lease_id: str) -> dict[str, Any]:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return {"ok": False, "code": "unknown_lease", "message": f"no lease {lease_id}"}
        if lease.sandbox is not None:
            # Closed, never returned to the idle list: its variables and files are the
            # owner's, and the next lease may be another session's. The warm minimum
            # keeps fresh ones ready.
            await self._close(lease.sandbox)
            lease.sandbox = None
        await self._notify()
        return {"ok": True}

    async def _drop_lease(self, lease: Lease, reason: str) -> None:
        self.leases.pop(lease.lease_id, None)
        for future in lease.replies.values():
            if not future.done():
                future.set_exception(RuntimeError(f"the lease was {reason}"))
        if lease.sandbox is not None:
            await self._close(lease.sandbox)
            lease.sandbox = None
        await self._notify()

    async def cancel_owner(self, owner_prefix: str) -> dict[str, Any]:
        """Stop every sandbox leased by owners starting with ``owner_prefix`` (a cancelled turn)."""
        stopped = 0
        for lease in list(self.leases.values()):
            if lease.owner.startswith(owner_prefix):
                await self._drop_lease(lease, reason="cancelled")
                stopped += 1
        return {"ok": True, "stopped": stopped}

    # --- execution ----------------------------------------------------------------------

    async def execute(
        self,
        lease_id: str,
        code: str,
        variables: dict[str, Any],
        tools: list[str],
        output_fields: list[dict[str, Any]] | None,
        timeout_s: float,
    ) -> AsyncIterator[dict[str, Any]]:
        lease = self.leases.get(lease_id)
        if lease is None:
            result = ExecResult(
                "crashed", error="the sandbox lease has ended (cancelled or reaped)"
            )
            yield {"type": "done", "result": dataclasses.asdict(result)}
            return
        replaced = False
        if lease.sandbox is None or not await lease.sandbox.healthy():
            replaced = True
            if not await self._replace(lease):
                result = ExecResult("crashed", error="no sandbox is free to replace the broken one")
                yield {"type": "done", "result": dataclasses.asdict(result)}
                return
        requests: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        async def on_tool(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
            call_id = len(lease.replies) + 1
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            lease.replies[call_id] = future
            await requests.put(
                {
                    "type": "tool_request",
                    "id": call_id,
                    "name": name,
                    "args": args,
                    "kwargs": kwargs,
                }
            )
            return await future

        assert lease.sandbox is not None
        run = asyncio.get_running_loop().create_task(
            lease.sandbox.execute(code, variables, tools, output_fields, on_tool, timeout_s)
        )
        while not run.done():
            getter = asyncio.get_running_loop().create_task(requests.get())
            await asyncio.wait({run, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield getter.result()
            else:
                getter.cancel()
        while not requests.empty():  # requests that raced the end; they are unanswerable now
            requests.get_nowait()
        result = run.result()
        if result.broken and lease.sandbox is not None:
            self.counts["replaced"] += 1
            await self._close(lease.sandbox)
            lease.sandbox = None
            await self._notify()
        if replaced:
            result.error = (
                (result.error or "")
                + " (note: the sandbox was replaced; variables from earlier steps are gone)"
            ).strip()
        yield {"type": "done", "result": dataclasses.asdict(result)}

    async def _replace(self, lease: Lease) -> bool:
        """Give the lease a fresh sandbox within the bound (its state is lost)."""
        if lease.sandbox is not None:
            self.counts["replaced"] += 1
            await self._close(lease.sandbox)
            lease.sandbox = None
        deadline = time.monotonic() + self.settings.sandbox_lease_timeout_s
        lease.sandbox = await self._take(deadline)
        return lease.sandbox is not None

    async def reply(
        self, lease_id: str, call_id: int, value: Any = None, error: str | None = None
    ) -> bool:
        lease = self.leases.get(lease_id)
        future = lease.replies.pop(call_id, None) if lease else None
        if future is None or future.done():
            return False
        if error is not None:
            future.set_exception(RuntimeError(error))
        else:
            future.set_result(value)
        return True

    async def upload(self, lease_id: str, path: str, data: bytes) -> dict[str, Any]:
        lease = self.leases.get(lease_id)
        if lease is None or lease.sandbox is None:
            return {"ok": False, "code": "unknown_lease", "message": f"no lease {lease_id}"}
        await lease.sandbox.upload(path, data)
        return {"ok": True}

    # --- observability ------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        self._start_background()
        return {
            "provider": self.provider.name,
            "isolation": self.provider.isolation(),
            "max_total": self.max_total,
            "total": self.total,
            "idle": len(self.idle),
            "leased": len(self.leases),
            "creating": self.creating,
            "high_water": self.high_water,
            **self.counts,
        }

    async def close_all(self) -> dict[str, Any]:
        for lease in list(self.leases.values()):
            await self._drop_lease(lease, reason="closed")
        while self.idle:
            sandbox, _ = self.idle.pop()
            await self._close(sandbox)
        return {"ok": True}


SandboxPoolRemote = ray.remote(SandboxPool)


def get_pool(settings: Settings) -> Any:
    """The cluster's pool actor, created on first use."""
    return SandboxPoolRemote.options(
        name=POOL_NAME,
        namespace=settings.ray_namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        max_restarts=-1,
        max_concurrency=1000,
    ).remote(settings)
