"""The Daytona provider: sandboxes in Daytona, driven through the real ``daytona`` SDK.

``DaytonaProvider(settings)`` creates a sandbox (from ``SandboxSpec.snapshot`` or
``.image``, else the SDK's default snapshot), clones ``repo_url`` at ``repo_ref`` into its
working directory when asked, and hands back a ``DaytonaSandbox``. Both implement the
protocols in ``fleet_rlm.sandbox.protocol``.

How an execute keeps state: Daytona's code-run starts a new Python process per call, so
each execute uploads its call (code, variables, limits) as JSON and runs a small driver
(``_sandbox_driver`` below, uploaded once at create) that rebuilds the namespace from the
previous executes, runs the code, and saves it again (in ``{work dir}/.fleet_rlm``):

- top-level imports, ``def`` and ``class`` statements are kept as source and replayed;
- every other global is pickled one by one; what cannot be pickled (lambdas, open files,
  generators) is dropped, and its name logged.

Layout in the sandbox: ``{work dir}/workspace`` is the code's working directory (the
repository checkout when one was cloned; ``upload`` paths are relative to it), and
``{work dir}/.fleet_rlm`` holds the driver and the saved state.

Limits of this version: host tools (``llm_query``, ``sub_rlm``, any name in ``tools``)
cannot be called back from a remote sandbox; they are defined there as stubs that raise
``RuntimeError`` and say to use ``SANDBOX_PROVIDER=local``. ``on_tool`` is never called.

The SDK is told to poll (``use_deprecated_polling=True``): otherwise constructing the client
opens a socket.io connection to the API host's ``/socket.io/``. ``api_url`` is always given
explicitly, so the SDK's built-in cloud default is never used. SDK and HTTP failures become
``DaytonaSandboxError`` with a ``category``: config, auth, not_found, timeout, invalid,
unavailable.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import math
import re
import time
import warnings
from dataclasses import dataclass
from typing import Any

from daytona import (
    AsyncDaytona,
    AsyncSandbox,
    CreateSandboxFromImageParams,
    CreateSandboxFromSnapshotParams,
    DaytonaConfig,
)
from daytona.common.errors import (
    DaytonaAuthenticationError,
    DaytonaBadRequestError,
    DaytonaConnectionError,
    DaytonaForbiddenError,
    DaytonaGitAuthFailedError,
    DaytonaNotFoundError,
    DaytonaTimeoutError,
)

from fleet_rlm.config import Settings
from fleet_rlm.sandbox.protocol import ExecResult, SandboxError, SandboxSpec, ToolHandler

logger = logging.getLogger(__name__)

DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024
_MARKER = "\x1efleet-rlm-report:"
_RUN_GRACE_S = 10  # driver start, replay and pickling, on top of the code's own timeout
_COMMIT = re.compile(r"[0-9a-f]{7,40}")
_ADVICE = {
    "config": "set DAYTONA_API_KEY and DAYTONA_API_URL (e.g. https://app.daytona.io/api)",
    "auth": "check DAYTONA_API_KEY, and that DAYTONA_API_URL is the deployment it belongs to",
    "not_found": "check the snapshot, image or repository named, and that the sandbox still "
    "exists (Daytona deletes stopped ephemeral sandboxes)",
    "timeout": "Daytona did not answer in time; retry, or check the deployment's status",
    "invalid": "Daytona refused the request; check the snapshot or image name, DAYTONA_TARGET "
    "and the repository ref",
    "unavailable": "check that DAYTONA_API_URL is reachable from here, then retry",
}


class DaytonaSandboxError(SandboxError):
    """A Daytona call failed; ``category`` says which kind of failure, the message what to do."""

    def __init__(self, message: str, *, category: str = "unavailable") -> None:
        super().__init__(message, code=f"daytona_{category}")
        self.category = category

    def __reduce__(self) -> tuple[Any, ...]:  # crosses Ray processes with its category
        return (type(self), (self.message,), {"category": self.category, "code": self.code})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


def _category(exc: BaseException) -> str:
    """One of auth, not_found, timeout, invalid, unavailable: by SDK class, else HTTP status."""
    if isinstance(exc, DaytonaAuthenticationError | DaytonaForbiddenError):
        return "auth"
    if isinstance(exc, DaytonaNotFoundError):
        return "not_found"
    if isinstance(exc, DaytonaTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(exc, DaytonaConnectionError):
        return "unavailable"
    if isinstance(exc, DaytonaBadRequestError):
        return "invalid"
    # code-run and execute are not wrapped by the SDK: their errors are the generated
    # client's ApiException, which carries only the HTTP status.
    status = getattr(exc, "status_code", None) or getattr(exc, "status", None)
    by_status = {401: "auth", 403: "auth", 404: "not_found", 408: "timeout", 504: "timeout"}
    if status in by_status:
        return by_status[status]
    if isinstance(status, int) and 400 <= status < 500 and status != 429:
        return "invalid"
    return "unavailable"


def sandbox_error(
    exc: BaseException, action: str, advice: str | None = None
) -> DaytonaSandboxError:
    """``exc`` from the SDK or its HTTP layer, as an error that says what to do."""
    if isinstance(exc, DaytonaSandboxError):
        return exc
    category = _category(exc)
    detail = str(getattr(exc, "message", None) or exc).strip().splitlines()
    first = detail[0] if detail else type(exc).__name__
    # A 401 means the Daytona key, except when git says the repository wants credentials.
    api_auth = category == "auth" and not isinstance(exc, DaytonaGitAuthFailedError)
    hint = advice if advice and not api_auth else _ADVICE[category]
    return DaytonaSandboxError(f"Daytona could not {action}: {first} ({hint})", category=category)


def check_settings(settings: Settings) -> None:
    """Raise ``DaytonaSandboxError`` (category config) unless the key and the URL are set."""
    missing = [
        name
        for name, value in (
            ("DAYTONA_API_KEY", settings.daytona_api_key),
            ("DAYTONA_API_URL", settings.daytona_api_url),
        )
        if not value
    ]
    if missing:
        raise DaytonaSandboxError(
            f"{' and '.join(missing)} not set; {_ADVICE['config']}", category="config"
        )


def _make_client(settings: Settings) -> AsyncDaytona:
    config = DaytonaConfig(
        api_key=settings.daytona_api_key,
        api_url=settings.daytona_api_url,
        target=settings.daytona_target,
        otel_enabled=False,
        # Without this the constructor starts a socket.io connection (AsyncEventDispatcher).
        use_deprecated_polling=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # polling is deprecated upstream
        return AsyncDaytona(config)


@dataclass(frozen=True)
class _Paths:
    cwd: str
    state: str

    @property
    def driver(self) -> str:
        return f"{self.state}/driver.py"

    @property
    def call(self) -> str:
        return f"{self.state}/call.json"


class DaytonaProvider:
    """Creates ``DaytonaSandbox``es; one SDK client per event loop, closed by ``aclose``."""

    name = "daytona"

    def __init__(
        self,
        settings: Settings,
        *,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        create_timeout_s: float = 120.0,
        request_timeout_s: float = 60.0,
    ) -> None:
        check_settings(settings)
        self._settings = settings
        self._max_output_bytes = max_output_bytes
        self._create_timeout_s = create_timeout_s
        self._request_timeout_s = request_timeout_s
        self._client: AsyncDaytona | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None

    def _sdk(self) -> AsyncDaytona:
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client, self._client_loop = _make_client(self._settings), loop
        return self._client

    async def create(self, spec: SandboxSpec) -> DaytonaSandbox:
        params: CreateSandboxFromSnapshotParams | CreateSandboxFromImageParams
        common: dict[str, Any] = {
            "language": "python",
            "labels": {"fleet-rlm": "sandbox", **spec.labels},
            "ephemeral": True,  # a leaked sandbox is deleted once Daytona auto-stops it
        }
        if spec.image and not spec.snapshot:
            params = CreateSandboxFromImageParams(image=spec.image, **common)
        else:
            params = CreateSandboxFromSnapshotParams(snapshot=spec.snapshot, **common)
        try:
            remote = await self._sdk().create(params, timeout=self._create_timeout_s)
        except Exception as exc:
            if isinstance(exc, DaytonaTimeoutError) and exc.sandbox_id:
                if await self._delete_stray(exc.sandbox_id):
                    message = (
                        f"Daytona did not start sandbox {exc.sandbox_id} within"
                        f" {self._create_timeout_s:g} s, so it was deleted; {_ADVICE['timeout']}"
                    )
                    raise DaytonaSandboxError(message, category="timeout") from exc
            raise sandbox_error(exc, "create a sandbox") from exc

        sandbox = DaytonaSandbox(remote, self._max_output_bytes, self._request_timeout_s)
        try:
            await sandbox._prepare()
            if spec.repo_url:
                await sandbox.clone(spec.repo_url, spec.repo_ref)
        except BaseException:
            await sandbox._close_quietly()
            raise
        logger.info("daytona sandbox %s ready (repo=%s)", sandbox.sandbox_id, spec.repo_url)
        return sandbox

    async def _delete_stray(self, sandbox_id: str) -> bool:
        """Delete a sandbox whose create timed out after Daytona had made it; True if gone."""
        try:
            stray = await self._sdk().get(sandbox_id, request_timeout=self._request_timeout_s)
            await stray.delete(timeout=self._request_timeout_s)
        except Exception as exc:
            logger.warning("daytona sandbox %s (create timed out) not deleted: %s", sandbox_id, exc)
            return False
        logger.info("daytona sandbox %s deleted after its create timed out", sandbox_id)
        return True

    def isolation(self) -> dict[str, Any]:
        return {
            "provider": "daytona",
            "network": "provider-managed",
            "filesystem": "a Daytona sandbox, deleted on close",
            "host_tools": False,
            "state": "imports and definitions replayed, other globals pickled, per execute",
            "max_output_bytes": self._max_output_bytes,
            "api_url": self._settings.daytona_api_url,
            "target": self._settings.daytona_target,
        }

    async def aclose(self) -> None:
        """Close the SDK client (its HTTP session); sandboxes made by it stop working."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


class DaytonaSandbox:
    """One Daytona sandbox; executes run one at a time through the uploaded driver."""

    def __init__(self, remote: AsyncSandbox, max_output_bytes: int, request_timeout_s: float):
        self.sandbox_id: str = remote.id
        self._remote = remote
        self._max_output_bytes = max_output_bytes
        self._request_timeout_s = request_timeout_s
        self._upload_timeout = math.ceil(request_timeout_s)
        self._paths = _Paths(cwd="workspace", state=".fleet_rlm")
        self._lock = asyncio.Lock()
        self._closed = False

    async def _prepare(self) -> None:
        try:
            work_dir = await asyncio.wait_for(
                self._remote.get_work_dir(), timeout=self._request_timeout_s
            )
            base = work_dir.rstrip("/")
            self._paths = _Paths(cwd=f"{base}/workspace", state=f"{base}/.fleet_rlm")
            driver = _driver_source().encode()
            await self._remote.fs.upload_file(driver, self._paths.driver, self._upload_timeout)
        except Exception as exc:
            raise sandbox_error(exc, f"set up sandbox {self.sandbox_id}") from exc

    async def clone(self, url: str, ref: str | None = None) -> None:
        """Clone ``url`` (at a branch, or a commit when ``ref`` looks like a hash) as the cwd."""
        commit = ref if ref and _COMMIT.fullmatch(ref) else None
        branch = ref if ref and commit is None else None
        try:
            await self._remote.git.clone(
                url,
                self._paths.cwd,
                branch=branch,
                commit_id=commit,
                request_timeout=self._request_timeout_s,
            )
        except Exception as exc:
            advice = "check the repository URL and ref, and that the sandbox can reach it"
            raise sandbox_error(exc, f"clone {url}", advice) from exc
        logger.info("daytona sandbox %s cloned %s at %s", self.sandbox_id, url, ref or "HEAD")

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
        call = {
            "code": code,
            "variables": variables,
            "tools": list(tools),
            "output_fields": output_fields or [],
            "timeout_s": timeout_s,
            "max_output": self._max_output_bytes,
            "cwd": self._paths.cwd,
            "state_dir": self._paths.state,
            "marker": _MARKER,
        }
        bootstrap = (
            f"import runpy\nrunpy.run_path({self._paths.driver!r})"
            f"['_sandbox_driver']({self._paths.call!r})\n"
        )
        run_timeout = math.ceil(timeout_s) + _RUN_GRACE_S
        async with self._lock:
            if self._closed:
                return ExecResult("crashed", error="the sandbox is closed", broken=True)
            try:
                payload = json.dumps(call, default=repr).encode()
                await self._remote.fs.upload_file(payload, self._paths.call, self._upload_timeout)
                response = await asyncio.wait_for(
                    self._remote.process.code_run(bootstrap, timeout=run_timeout),
                    timeout=run_timeout + self._request_timeout_s,
                )
            except Exception as exc:
                return self._failed_call(exc, timeout_s, started)
        return self._result(response.result or "", response.exit_code, started)

    def _failed_call(self, exc: Exception, timeout_s: float, started: float) -> ExecResult:
        duration_ms = int((time.monotonic() - started) * 1000)
        error = sandbox_error(exc, f"run code in sandbox {self.sandbox_id}")
        if error.category == "timeout":
            # The daemon killed the run (the driver's own alarm did not fire), or no answer
            # came at all; in the second case the run may still be going, so replace it.
            lost = isinstance(exc, TimeoutError)
            message = f"execution exceeded {timeout_s:g} s"
            return ExecResult("limit", error=message, broken=lost, duration_ms=duration_ms)
        logger.warning("daytona sandbox %s execute failed: %s", self.sandbox_id, error.message)
        return ExecResult("crashed", error=error.message, broken=True, duration_ms=duration_ms)

    def _result(self, text: str, exit_code: int | None, started: float) -> ExecResult:
        duration_ms = int((time.monotonic() - started) * 1000)
        at = text.rfind(_MARKER)
        if at < 0:
            tail = _cap(text, self._max_output_bytes)[0].strip()[-2000:]
            return ExecResult(
                "crashed",
                error=f"the sandbox process exited (code {exit_code}) before reporting: {tail}",
                duration_ms=duration_ms,
            )
        try:
            report = json.loads(text[at + len(_MARKER) :].split("\n", 1)[0])
        except ValueError:
            return ExecResult(
                "crashed", error="the sandbox's report was cut", duration_ms=duration_ms
            )
        if report.get("dropped"):
            logger.info(
                "daytona sandbox %s: not kept for the next execute (unpicklable): %s",
                self.sandbox_id,
                ", ".join(report["dropped"]),
            )
        if report.get("state_error"):
            logger.warning(
                "daytona sandbox %s could not save state: %s",
                self.sandbox_id,
                report["state_error"],
            )
        stdout, cut = _cap(report.get("stdout") or "", self._max_output_bytes)
        return ExecResult(
            kind=report["kind"],
            stdout=stdout,
            value=report.get("value"),
            error=report.get("error"),
            truncated=cut or bool(report.get("truncated")),
            duration_ms=duration_ms,
        )

    async def upload(self, path: str, data: bytes) -> None:
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"upload path must be relative to the working directory: {path!r}")
        try:
            await self._remote.fs.upload_file(
                data, f"{self._paths.cwd}/{path}", self._upload_timeout
            )
        except Exception as exc:
            raise sandbox_error(exc, f"upload {path} to sandbox {self.sandbox_id}") from exc

    async def healthy(self) -> bool:
        if self._closed:
            return False
        try:
            await self._remote.refresh_data(request_timeout=self._request_timeout_s)
        except Exception as exc:
            logger.info("daytona sandbox %s unhealthy: %s", self.sandbox_id, exc)
            return False
        return str(getattr(self._remote.state, "value", self._remote.state)) == "started"

    async def close(self) -> None:
        """Delete the sandbox; idempotent. Raises ``DaytonaSandboxError`` if Daytona refuses."""
        if self._closed:
            return
        try:
            await self._remote.delete(timeout=self._request_timeout_s)
        except DaytonaNotFoundError:
            pass  # already gone
        except Exception as exc:
            raise sandbox_error(exc, f"delete sandbox {self.sandbox_id}") from exc
        self._closed = True
        logger.info("daytona sandbox %s deleted", self.sandbox_id)

    async def _close_quietly(self) -> None:
        try:
            await self.close()
        except Exception as exc:
            logger.warning("daytona sandbox %s not deleted: %s", self.sandbox_id, exc)


def _cap(text: str, max_bytes: int) -> tuple[str, bool]:
    data = text.encode("utf-8", "replace")
    if len(data) <= max_bytes:
        return text, False
    return data[:max_bytes].decode("utf-8", "ignore"), True


@functools.cache
def _driver_source() -> str:
    return inspect.getsource(_sandbox_driver)


def _sandbox_driver(call_path: str) -> None:
    """Run one execute inside the sandbox; this function's source is what gets uploaded.

    Standard library only, and no annotations: it runs on the sandbox's own Python.
    """
    import ast
    import io
    import json
    import linecache
    import os
    import pickle
    import signal
    import sys
    import traceback
    import types

    with open(call_path, encoding="utf-8") as f:
        call = json.load(f)
    os.remove(call_path)
    values_path = os.path.join(call["state_dir"], "values.pkl")
    defs_path = os.path.join(call["state_dir"], "defs.json")
    os.makedirs(call["cwd"], exist_ok=True)
    os.chdir(call["cwd"])
    sys.path.insert(0, call["cwd"])
    # A real module, so that functions and classes defined by the code pickle by reference.
    module = types.ModuleType("__sandbox__")
    sys.modules["__sandbox__"] = module
    ns = module.__dict__

    class Final(BaseException):  # not Exception: user code's `except Exception` must not eat it
        pass

    class TimedOut(BaseException):
        pass

    class CappedText(io.TextIOBase):
        def __init__(self, cap):
            self.cap, self.parts, self.size, self.truncated = cap, [], 0, False

        def writable(self):
            return True

        def write(self, text):
            room = max(self.cap - self.size, 0)
            kept = text if len(text) <= room else text[:room]
            self.truncated = self.truncated or len(kept) < len(text)
            self.parts.append(kept)
            self.size += len(kept)
            return len(text)

    defs = []
    if os.path.exists(defs_path):
        with open(defs_path, encoding="utf-8") as f:
            defs = json.load(f)
    for _key, source in defs:
        try:
            exec(compile(source, "<replayed>", "exec"), ns)
        except Exception:
            pass
    if os.path.exists(values_path):
        with open(values_path, "rb") as f:
            for name, blob in pickle.load(f).items():
                try:
                    ns[name] = pickle.loads(blob)
                except Exception:
                    pass

    def stub(name):
        def unavailable(*args, **kwargs):
            raise RuntimeError(
                f"{name} is not available on the daytona provider; use SANDBOX_PROVIDER=local"
            )

        return unavailable

    fields = [field.get("name") for field in call["output_fields"]]

    def submit(*args, **kwargs):  # the same forms the local runner accepts
        if kwargs:
            value = dict(kwargs)
        elif len(args) == 1 and isinstance(args[0], dict) and set(args[0]) <= set(fields):
            value = dict(args[0])
        elif fields and len(args) == len(fields):
            value = dict(zip(fields, args))  # noqa: B905 (strict= needs Python 3.10)
        else:
            value = args[0] if len(args) == 1 else list(args)
        raise Final(value)

    ns.update(call["variables"])
    ns.update({name: stub(name) for name in call["tools"]})
    ns["SUBMIT"] = submit

    code, kind, value, error = call["code"], "result", None, None
    out = CappedText(call["max_output"])
    linecache.cache["<sandbox>"] = (len(code), None, code.splitlines(True), "<sandbox>")
    try:
        tree = ast.parse(code, "<sandbox>")
        body, tail = tree.body, None
        if body and isinstance(body[-1], ast.Expr):  # a trailing expression prints, REPL-like
            body, tail = body[:-1], compile(ast.Expression(body[-1].value), "<sandbox>", "eval")
        compiled = compile(ast.Module(body=body, type_ignores=[]), "<sandbox>", "exec")
    except (SyntaxError, ValueError) as exc:
        tree, kind = None, "syntax_error"
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    if tree is not None:

        def on_alarm(signum, frame):
            raise TimedOut()

        signal.signal(signal.SIGALRM, on_alarm)
        saved = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = out
        try:
            signal.setitimer(signal.ITIMER_REAL, call["timeout_s"])
            exec(compiled, ns)
            shown = eval(tail, ns) if tail is not None else None
            if shown is not None:
                print(repr(shown))
        except Final as exc:
            kind, value = "final", exc.args[0]
        except TimedOut:
            kind, error = "limit", f"execution exceeded {call['timeout_s']:g} s"
        except BaseException as exc:
            own = sys._getframe().f_code.co_filename  # the driver's frames are not the code's
            frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename != own]
            kind = "execution_error"
            error = (
                "Traceback (most recent call last):\n"
                + "".join(
                    traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
                ).rstrip()
            )
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            sys.stdout, sys.stderr = saved

    report = {"kind": kind, "value": value, "error": error, "dropped": []}
    try:
        if tree is not None:
            kept = dict(defs)
            for node in tree.body:
                if isinstance(node, (ast.Import, ast.ImportFrom)):  # noqa: UP038 (3.9)
                    key = "import:" + ast.unparse(node)
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):  # noqa: UP038
                    key = "def:" + node.name
                else:
                    continue
                kept.pop(key, None)
                kept[key] = ast.unparse(node)
            with open(defs_path + ".tmp", "w", encoding="utf-8") as f:
                json.dump(list(kept.items()), f)
            os.replace(defs_path + ".tmp", defs_path)
        blobs = {}
        skip = {"SUBMIT", *call["tools"]}
        for name, item in list(ns.items()):
            if name.startswith("__") or name in skip or isinstance(item, types.ModuleType):
                continue
            try:
                blobs[name] = pickle.dumps(item, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                report["dropped"].append(name)
        with open(values_path + ".tmp", "wb") as f:
            pickle.dump(blobs, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(values_path + ".tmp", values_path)
    except Exception as exc:
        report["state_error"] = repr(exc)
    report.update(stdout="".join(out.parts), truncated=out.truncated)
    sys.stdout.write("\n" + call["marker"] + json.dumps(report, default=repr) + "\n")
    sys.stdout.flush()
