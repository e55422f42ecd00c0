"""``fleet-rlm daytona-smoke``: is Daytona usable from here, step by step, without an LM?

Phases, in order; the first failure stops the rest, but cleanup always runs once a sandbox
exists:

- ``config``     DAYTONA_API_KEY and DAYTONA_API_URL are set
- ``create``     a sandbox is created and started through the SDK
- ``clone``      ``--repo`` (at ``--ref``) is cloned into its working directory (skipped
                 without a repo, as in the runtime's Daytona probe)
- ``execute_1``  ``x = 41`` runs, and lists the checkout
- ``execute_2``  ``print(x + 1)`` prints 42: state survived from one execute to the next
- ``cleanup``    the sandbox is deleted

The report is one JSON object on stdout: ``ok``, ``phases`` (each with ``ok`` and
``duration_ms``, and ``error`` / ``error_category`` when it failed), ``failed_phase``,
``error_category`` and ``error``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fleet_rlm.config import Settings
from fleet_rlm.sandbox.daytona import DaytonaProvider, DaytonaSandbox, sandbox_error
from fleet_rlm.sandbox.protocol import ExecResult, SandboxSpec

FIRST = "x = 41\nimport os\nprint(sorted(os.listdir('.')))"
SECOND = "print(x + 1)"


class _PhaseFailed(Exception):
    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category


async def _no_tools(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    raise RuntimeError("the smoke test gives the sandbox no tools")


class _Report:
    def __init__(self) -> None:
        self.phases: dict[str, dict[str, Any]] = {}
        self.failed: tuple[str, str, str] | None = None  # phase, category, message

    async def run(self, name: str, step: Callable[[], Awaitable[dict[str, Any]]]) -> bool:
        started = time.monotonic()
        entry: dict[str, Any] = {"ok": True}
        try:
            entry.update(await step())
        except Exception as exc:
            category = getattr(exc, "category", None) or sandbox_error(exc, name).category
            entry.update(ok=False, error_category=category, error=str(exc))
            if self.failed is None:
                self.failed = (name, category, str(exc))
        entry["duration_ms"] = int((time.monotonic() - started) * 1000)
        self.phases[name] = entry
        return bool(entry["ok"])

    def as_dict(self) -> dict[str, Any]:
        phase, category, error = self.failed or (None, None, None)
        return {
            "ok": self.failed is None,
            "phases": self.phases,
            "failed_phase": phase,
            "error_category": category,
            "error": error,
        }


def _checked(result: ExecResult, expect: str | None = None) -> dict[str, Any]:
    if not result.ok:
        raise _PhaseFailed(result.kind, result.error or result.kind)
    if expect is not None and result.stdout.strip() != expect:
        message = f"expected {expect!r} from the second execute, got {result.stdout.strip()!r}"
        raise _PhaseFailed("state", message + "; state did not persist between executes")
    return {"stdout": result.stdout[-2000:]}


async def run_smoke(
    settings: Settings | None, repo: str | None, ref: str | None = None, timeout_s: float = 60.0
) -> dict[str, Any]:
    """Run the phases against Daytona (``settings``, else the environment); the report."""
    report = _Report()
    holder: dict[str, Any] = {}

    async def config() -> dict[str, Any]:
        try:
            chosen = settings or Settings()
        except ValueError as exc:  # pydantic's ValidationError: a malformed setting
            raise _PhaseFailed("config", f"the settings do not parse: {exc}") from exc
        holder["provider"] = DaytonaProvider(chosen)
        return {"api_url": chosen.daytona_api_url, "target": chosen.daytona_target}

    async def create() -> dict[str, Any]:
        holder["sandbox"] = await holder["provider"].create(SandboxSpec(labels={"smoke": "1"}))
        return {"sandbox_id": holder["sandbox"].sandbox_id}

    async def clone() -> dict[str, Any]:
        if repo is None:
            return {"skipped": True}
        await sandbox().clone(repo, ref)
        return {"repo": repo, "ref": ref}

    async def execute(code: str, expect: str | None) -> dict[str, Any]:
        result = await sandbox().execute(code, {}, [], None, _no_tools, timeout_s)
        return _checked(result, expect)

    async def cleanup() -> dict[str, Any]:
        await sandbox().close()
        return {}

    def sandbox() -> DaytonaSandbox:
        return holder["sandbox"]

    try:
        _ = (
            await report.run("config", config)
            and await report.run("create", create)
            and await report.run("clone", clone)
            and await report.run("execute_1", lambda: execute(FIRST, None))
            and await report.run("execute_2", lambda: execute(SECOND, "42"))
        )
    finally:
        if "sandbox" in holder:
            await report.run("cleanup", cleanup)
        if "provider" in holder:
            await holder["provider"].aclose()
    return report.as_dict()


def main(repo: str, ref: str | None = None, timeout_s: float = 60.0) -> int:
    """The CLI face: print the report as JSON; 0 when every phase passed, else 1."""
    report = asyncio.run(run_smoke(None, repo, ref, timeout_s))
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1
