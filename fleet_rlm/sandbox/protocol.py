"""What a sandbox provider implements, and what an execute returns.

A provider makes sandboxes; a sandbox runs Python code with state that persists across
``execute`` calls until ``close``. Code in a sandbox reaches the host only through the
tools it was given: each call arrives as ``on_tool(name, args, kwargs)`` on the host,
whose JSON-compatible return value (or raised error) goes back to the code.

Lifecycle and ownership: the ``SandboxPool`` actor owns every sandbox. It calls
``create`` (possibly ahead of demand, to keep a warm minimum), leases the sandbox to one
child run at a time, calls ``healthy`` before each lease, and ``close`` when it reaps or
replaces it. ``close`` is idempotent. A sandbox is never shared by two leases at once.

Errors: an ``execute`` never raises for anything the code did (an exception, a syntax
error, a blown limit, a dead process): it returns an ``ExecResult`` whose ``kind`` says
what happened, and sets ``broken`` when the sandbox can no longer be used, so the pool
replaces it. ``SandboxError`` is raised only for host-side failures (the provider cannot
create a sandbox, credentials are wrong).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from fleet_rlm.errors import FleetError

ResultKind = Literal["result", "final", "syntax_error", "execution_error", "limit", "crashed"]
ToolHandler = Callable[[str, list[Any], dict[str, Any]], Awaitable[Any]]


class SandboxError(FleetError):
    """The provider could not create or reach a sandbox."""

    code = "sandbox_unavailable"
    status = 503


@dataclass(frozen=True)
class SandboxSpec:
    """What a sandbox is created with; providers ignore what they cannot honour."""

    repo_url: str | None = None
    repo_ref: str | None = None
    image: str | None = None
    snapshot: str | None = None
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class ExecResult:
    kind: ResultKind
    stdout: str = ""
    value: Any = None
    error: str | None = None
    truncated: bool = False
    broken: bool = False
    duration_ms: int = 0

    @property
    def ok(self) -> bool:
        return self.kind in ("result", "final")

    def observation(self) -> str:
        """The text an RLM sees for this execute."""
        if self.kind == "result":
            return self.stdout if self.value is None else f"{self.stdout}{self.value!r}"
        if self.kind == "final":
            return f"SUBMIT({self.value!r})"
        return f"[{self.kind}] {self.error or ''}".rstrip()


@runtime_checkable
class Sandbox(Protocol):
    sandbox_id: str

    async def execute(
        self,
        code: str,
        variables: dict[str, Any],
        tools: list[str],
        output_fields: list[dict[str, Any]] | None,
        on_tool: ToolHandler,
        timeout_s: float,
    ) -> ExecResult:
        """Run ``code`` with ``variables`` bound and ``tools`` callable as globals."""
        ...

    async def upload(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` relative to the sandbox's working directory."""
        ...

    async def healthy(self) -> bool:
        """True when the sandbox can take the next execute."""
        ...

    async def close(self) -> None:
        """Release the sandbox; idempotent."""
        ...


@runtime_checkable
class SandboxProvider(Protocol):
    name: str

    async def create(self, spec: SandboxSpec) -> Sandbox:
        """A new, started sandbox; raises ``SandboxError`` if none can be made."""
        ...

    def isolation(self) -> dict[str, Any]:
        """What confinement this provider gives here (for ``/ready`` and the docs)."""
        ...
