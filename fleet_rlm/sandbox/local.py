"""The local provider: each sandbox is one confined Python process with its own directory.

The process runs ``runner.py`` (passed with ``-c``, so no file of the host needs to be
readable by it) under the limits of ``limits.confine``, with an empty environment. The
host side here speaks the runner's JSON-lines protocol, answers its tool requests
through ``on_tool``, and enforces a wall-clock limit on every execute. A process that
dies, overruns or breaks the protocol makes its sandbox ``broken``; the pool replaces it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from fleet_rlm.sandbox.limits import (
    SANDBOX_UIDS,
    Isolation,
    SandboxLimits,
    confine,
    prepare_workdir,
    probe_isolation,
)
from fleet_rlm.sandbox.protocol import ExecResult, SandboxError, SandboxSpec, ToolHandler

logger = logging.getLogger(__name__)

RUNNER_SOURCE = (Path(__file__).parent / "runner.py").read_text()
READY_TIMEOUT_S = 20.0
LINE_LIMIT = 64 * 1024 * 1024
_SIGNALS = {
    signal.SIGXCPU: "CPU time limit",
    signal.SIGKILL: "killed",
    signal.SIGXFSZ: "file size limit",
    signal.SIGSEGV: "crashed (memory)",
}


def _processes_by_uid() -> Iterator[tuple[int, psutil.Process]]:
    for proc in psutil.process_iter(["uids"]):
        uids = proc.info.get("uids")
        if uids:
            yield uids.real, proc


def kill_uid(uid: int) -> int:
    """SIGKILL every process running as ``uid`` (a sandbox's own); returns how many."""
    killed = 0
    for owner, proc in _processes_by_uid():
        if owner == uid:
            try:
                proc.kill()
                killed += 1
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
    return killed


def running_uids() -> set[int]:
    """The real uids of every process on this host."""
    return {owner for owner, _ in _processes_by_uid()}


def remove_tree(path: Path) -> None:
    """Remove a sandbox's directory, however deep the code made it."""
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        pass
    except (RecursionError, OSError):
        subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


class LocalSandbox:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        workdir: Path,
        limits: SandboxLimits,
        uid: int | None = None,
        on_close: Callable[[int | None], None] | None = None,
    ) -> None:
        self.sandbox_id = f"local-{uuid.uuid4().hex[:12]}"
        self.process = process
        self.workdir = workdir
        self.limits = limits
        self.uid = uid
        self._on_close = on_close
        self.executes = 0
        self._closed = False

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(message) + "\n").encode())
        await self.process.stdin.drain()

    async def _receive(self, deadline: float) -> dict[str, Any] | None:
        assert self.process.stdout is not None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        line = await asyncio.wait_for(self.process.stdout.readline(), remaining)
        if not line:
            return None
        try:
            message = json.loads(line)
        except RecursionError:
            raise ValueError("a frame nested too deeply") from None
        if not isinstance(message, dict) or not isinstance(message.get("type"), str):
            raise ValueError(f"not a message: {line[:80]!r}")
        return message

    async def wait_ready(self) -> None:
        message = await self._receive(time.monotonic() + READY_TIMEOUT_S)
        if not message or message.get("type") != "ready":
            raise SandboxError(f"the sandbox process did not start: {await self._death()}")

    async def execute(
        self,
        code: str,
        variables: dict[str, Any],
        tools: list[str],
        output_fields: list[dict[str, Any]] | None,
        on_tool: ToolHandler,
        timeout_s: float,
    ) -> ExecResult:
        started = time.monotonic()
        deadline = started + min(timeout_s, self.limits.exec_timeout_s)
        self.executes += 1
        try:
            await self._send(
                {
                    "type": "execute",
                    "code": code,
                    "variables": variables,
                    "tools": tools,
                    "output_fields": output_fields,
                }
            )
            while True:
                message = await self._receive(deadline)
                if message is None:
                    return self._result("crashed", started, error=await self._death(), broken=True)
                if message.get("type") != "tool_request":
                    return self._finished(message, started)
                if not isinstance(message.get("id"), int) or not isinstance(
                    message.get("name"), str
                ):
                    raise ValueError("a tool request without an id or a name")
                await self._answer_tool(message, on_tool)
        except TimeoutError:
            await self.close()
            limit = min(timeout_s, self.limits.exec_timeout_s)
            return self._result(
                "limit", started, error=f"execution timed out after {limit:g} s", broken=True
            )
        except (BrokenPipeError, ConnectionResetError):
            return self._result("crashed", started, error=await self._death(), broken=True)
        except (json.JSONDecodeError, ValueError) as exc:
            await self.close()
            return self._result(
                "crashed", started, error=f"the sandbox broke its protocol: {exc}", broken=True
            )

    async def _answer_tool(self, message: dict[str, Any], on_tool: ToolHandler) -> None:
        try:
            value = await on_tool(
                message["name"], message.get("args", []), message.get("kwargs", {})
            )
            json.dumps(value)
            reply = {"type": "tool_result", "id": message["id"], "value": value}
        except Exception as exc:  # the tool's failure goes back to the code as an exception
            reply = {
                "type": "tool_error",
                "id": message["id"],
                "error": f"{type(exc).__name__}: {exc}",
            }
        await self._send(reply)

    def _finished(self, message: dict[str, Any], started: float) -> ExecResult:
        kind = message.get("type")
        common = {"stdout": message.get("stdout", ""), "truncated": bool(message.get("truncated"))}
        if kind == "result":
            return self._result("result", started, **common)
        if kind == "final":
            return self._result("final", started, value=message.get("value"), **common)
        if kind in ("syntax_error", "execution_error"):
            return self._result(kind, started, error=message.get("error"), **common)
        return self._result("crashed", started, error=f"unknown reply {kind!r}", broken=True)

    @staticmethod
    def _result(kind: Any, started: float, **fields: Any) -> ExecResult:
        return ExecResult(kind=kind, duration_ms=int((time.monotonic() - started) * 1000), **fields)

    async def _death(self) -> str:
        try:
            code = await asyncio.wait_for(self.process.wait(), 2.0)
        except TimeoutError:
            await self.close()
            return "the sandbox stopped answering"
        if code < 0:
            sig = signal.Signals(-code)
            return f"the sandbox process was stopped by {sig.name} ({_SIGNALS.get(sig, 'signal')})"
        return f"the sandbox process exited with status {code}"

    async def upload(self, path: str, data: bytes) -> None:
        target = (self.workdir / path).resolve()
        if not target.is_relative_to(self.workdir.resolve()):
            raise SandboxError(f"upload path {path!r} leaves the sandbox's working directory")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        stat = self.workdir.stat()
        os.chown(target, stat.st_uid, stat.st_gid)

    async def healthy(self) -> bool:
        return not self._closed and self.process.returncode is None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.uid is not None:  # whatever left the process group still has the uid
            await asyncio.to_thread(kill_uid, self.uid)
        try:
            await asyncio.wait_for(self.process.wait(), 5.0)
        except TimeoutError:
            logger.warning(
                "sandbox %s: process %d did not go away", self.sandbox_id, self.process.pid
            )
        await asyncio.to_thread(remove_tree, self.workdir)
        if self._on_close is not None:
            self._on_close(self.uid)


class LocalProvider:
    name = "local"

    def __init__(self, limits: SandboxLimits, base_dir: Path) -> None:
        self.limits = limits
        self.base_dir = base_dir
        self.isolation_facts: Isolation = probe_isolation()
        self._uids_in_use: set[int] = set()

    def _take_uid(self) -> int | None:
        if not self.isolation_facts.drop_to_nobody:
            return None
        busy = running_uids()  # another server's sandboxes on this host, or leftovers
        for uid in SANDBOX_UIDS:
            if uid not in self._uids_in_use and uid not in busy:
                self._uids_in_use.add(uid)
                return uid
        raise SandboxError(f"all {len(SANDBOX_UIDS)} sandbox uids are in use")

    def _give_uid(self, uid: int | None) -> None:
        self._uids_in_use.discard(uid)

    def isolation(self) -> dict[str, Any]:
        return self.isolation_facts.describe()

    async def create(self, spec: SandboxSpec) -> LocalSandbox:
        uid = self._take_uid()
        try:
            workdir = prepare_workdir(self.base_dir, uid)
        except OSError as exc:
            self._give_uid(uid)
            raise SandboxError(f"could not make a sandbox directory: {exc}") from exc
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(workdir),
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "FLEET_SANDBOX_OUTPUT_BYTES": str(self.limits.output_bytes),
        }
        limits, isolation = self.limits, self.isolation_facts
        try:
            process = await asyncio.create_subprocess_exec(
                isolation.python,
                "-I",
                "-c",
                RUNNER_SOURCE,
                cwd=workdir,
                env=env,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
                preexec_fn=lambda: confine(limits, isolation, uid),
                limit=LINE_LIMIT,
            )
        except OSError as exc:
            remove_tree(workdir)
            self._give_uid(uid)
            raise SandboxError(f"could not start a sandbox process: {exc}") from exc
        sandbox = LocalSandbox(process, workdir, self.limits, uid, self._give_uid)
        try:
            await sandbox.wait_ready()
        except BaseException:
            await sandbox.close()
            raise
        logger.debug("sandbox %s started in %s", sandbox.sandbox_id, workdir)
        return sandbox
