"""A stand-in Daytona server on 127.0.0.1 that the real ``daytona`` SDK can talk to.

It serves the REST paths the SDK (0.226.1) calls for the fleet-rlm provider, found by
reading ``daytona/_async`` and the generated ``daytona_*_api_client_async`` packages:

control plane (``api_url`` = ``{url}/api``)
    POST   /api/sandbox                        create; answers state ``starting``
    GET    /api/sandbox/{id}                   the SDK polls this until ``started``
    GET    /api/sandbox/{id}/toolbox-proxy-url only if a record lacks ``toolboxProxyUrl``
    DELETE /api/sandbox/{id}
toolbox (``toolboxProxyUrl`` = ``{url}/toolbox``; the SDK appends ``/{id}/...``)
    GET    /toolbox/{id}/work-dir
    POST   /toolbox/{id}/process/execute       a shell command, for real, in the sandbox dir
    POST   /toolbox/{id}/process/code-run      Python code, for real, in the sandbox dir
    POST   /toolbox/{id}/files/bulk-upload     multipart ``files[i].path`` / ``files[i].file``
    POST   /toolbox/{id}/git/clone             local repositories only (a path or file:// URL)

Each sandbox is a temporary directory; commands run there as subprocesses with a timeout
(their process group is killed when it expires). Every request needs
``Authorization: Bearer <api_key>``; a wrong key gets 401. Error bodies carry
``message`` / ``code`` / ``source`` the way the SDK parses them; the codes come from the
SDK's own error table, not from a measured daemon, so they are a model of Daytona's
errors, not a recording. Every request is kept in ``requests`` for tests to assert on.
Anything else gets 404 ``not implemented by the stand-in`` (and is recorded too).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DAEMON = "DAYTONA_DAEMON"
API = "DAYTONA_API"
DEFAULT_API_KEY = "standin-api-key"


@dataclass
class RecordedRequest:
    method: str
    path: str
    body: Any = None
    status: int = 0
    user_agent: str = ""


@dataclass
class StandInSandbox:
    id: str
    root: Path
    record: dict[str, Any]
    polls: int = 0
    runs: int = 0


@dataclass
class _Outcome:
    exit_code: int | None  # None: killed at the timeout
    output: str


def _error(status: int, message: str, *, code: str | None = None, source: str = API) -> Response:
    body: dict[str, Any] = {"statusCode": status, "message": message, "source": source}
    if code:
        body["code"] = code
    return JSONResponse(body, status_code=status)


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout_s: float) -> _Outcome:
    """Run ``argv`` with stdout and stderr combined, killing its process group on timeout."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return _Outcome(None, out.decode("utf-8", "replace"))
    return _Outcome(proc.returncode, out.decode("utf-8", "replace"))


class DaytonaStandIn:
    """Start with ``start()`` (or ``with``); ``api_url`` is what ``DAYTONA_API_URL`` takes."""

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        root: Path | None = None,
        polls_until_started: int = 1,
        default_timeout_s: float = 60.0,
    ) -> None:
        self.api_key = api_key
        self.polls_until_started = polls_until_started
        self.default_timeout_s = default_timeout_s
        self.requests: list[RecordedRequest] = []
        self.sandboxes: dict[str, StandInSandbox] = {}
        self.deleted: list[str] = []
        self._own_root = root is None
        self._root = Path(tempfile.mkdtemp(prefix="daytona-standin-")) if root is None else root
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def start(self) -> DaytonaStandIn:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self._app(), log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the Daytona stand-in did not start within 10 s")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        if self._own_root:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> DaytonaStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests look at --------------------------------------------------------------

    def calls(self, method: str | None = None) -> list[str]:
        """``"METHOD /path"`` for every request seen, optionally of one method."""
        with self._lock:
            return [f"{r.method} {r.path}" for r in self.requests if method in (None, r.method)]

    def saw(self, method: str, path: str) -> bool:
        return f"{method} {path}" in self.calls()

    # -- the app -----------------------------------------------------------------------

    def _app(self) -> Starlette:
        routes = [
            Route("/api/sandbox", self._wrap(self._create), methods=["POST"]),
            Route("/api/sandbox/{sid}", self._wrap(self._get), methods=["GET"]),
            Route("/api/sandbox/{sid}", self._wrap(self._delete), methods=["DELETE"]),
            Route(
                "/api/sandbox/{sid}/toolbox-proxy-url",
                self._wrap(self._proxy_url),
                methods=["GET"],
            ),
            Route("/toolbox/{sid}/work-dir", self._wrap(self._work_dir), methods=["GET"]),
            Route("/toolbox/{sid}/process/execute", self._wrap(self._execute), methods=["POST"]),
            Route("/toolbox/{sid}/process/code-run", self._wrap(self._code_run), methods=["POST"]),
            Route("/toolbox/{sid}/files/bulk-upload", self._wrap(self._upload), methods=["POST"]),
            Route("/toolbox/{sid}/git/clone", self._wrap(self._clone), methods=["POST"]),
            Route(
                "/{rest:path}",
                self._wrap(self._unknown),
                methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            ),
        ]
        return Starlette(routes=routes)

    def _wrap(self, handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            raw = await request.body()  # cached, so handlers may still read the form
            body: Any = None
            if raw and request.headers.get("content-type", "").startswith("application/json"):
                body = await request.json()
            record = RecordedRequest(
                request.method,
                request.url.path,
                body,
                user_agent=request.headers.get("user-agent", ""),
            )
            with self._lock:
                self.requests.append(record)
            if request.headers.get("authorization") != f"Bearer {self.api_key}":
                response = _error(401, "Invalid API key", code="UNAUTHORIZED")
            else:
                response = await handler(request, body)
            record.status = response.status_code
            return response

        return endpoint

    def _sandbox(self, request: Request) -> StandInSandbox | None:
        return self.sandboxes.get(request.path_params["sid"])

    def _missing(self, request: Request) -> Response:
        return _error(404, f"Sandbox with ID or name {request.path_params['sid']} not found")

    # -- control plane -----------------------------------------------------------------

    async def _create(self, request: Request, body: Any) -> Response:
        body = body or {}
        sid = uuid.uuid4().hex
        root = self._root / sid
        root.mkdir(parents=True)
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
        record = {
            "id": sid,
            "organizationId": "standin-org",
            "name": body.get("name") or sid,
            "snapshot": body.get("snapshot") or "daytona-standin",
            "user": body.get("user") or "daytona",
            "env": body.get("env") or {},
            "labels": body.get("labels") or {},
            "public": bool(body.get("public")),
            "networkBlockAll": bool(body.get("networkBlockAll")),
            "kvm": False,
            "target": body.get("target") or "standin",
            "cpu": 1,
            "gpu": 0,
            "memory": 1,
            "disk": 3,
            "state": "starting",
            "desiredState": "started",
            "autoDeleteInterval": body.get("autoDeleteInterval", -1),
            "createdAt": now,
            "updatedAt": now,
            "toolboxProxyUrl": f"{self.url}/toolbox",
        }
        self.sandboxes[sid] = StandInSandbox(sid, root, record)
        return JSONResponse(record)

    async def _get(self, request: Request, body: Any) -> Response:
        sandbox = self._sandbox(request)
        if sandbox is None:
            return self._missing(request)
        sandbox.polls += 1
        if sandbox.polls >= self.polls_until_started:
            sandbox.record["state"] = "started"
        return JSONResponse(sandbox.record)

    async def _delete(self, request: Request, body: Any) -> Response:
        sandbox = self.sandboxes.pop(request.path_params["sid"], None)
        if sandbox is None:
            return self._missing(request)
        shutil.rmtree(sandbox.root, ignore_errors=True)
        self.deleted.append(sandbox.id)
        sandbox.record["state"] = "destroyed"
        sandbox.record["desiredState"] = "destroyed"
        return JSONResponse(sandbox.record)

    async def _proxy_url(self, request: Request, body: Any) -> Response:
        if self._sandbox(request) is None:
            return self._missing(request)
        return JSONResponse({"url": f"{self.url}/toolbox"})

    async def _unknown(self, request: Request, body: Any) -> Response:
        return _error(
            404, f"{request.method} {request.url.path} is not implemented by the stand-in"
        )

    # -- toolbox -----------------------------------------------------------------------

    def _env(self, sandbox: StandInSandbox, extra: dict[str, str] | None) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(sandbox.root),
            "LANG": "C.UTF-8",
            "PYTHONIOENCODING": "utf-8",
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_CONFIG_NOSYSTEM": "1",
        }
        env.update(extra or {})
        return env

    def _resolve(self, sandbox: StandInSandbox, path: str | None) -> Path | None:
        """``path`` inside the sandbox dir (relative to it, or absolute within it), else None."""
        root = sandbox.root.resolve()
        target = Path(path or ".")
        target = (target if target.is_absolute() else root / target).resolve()
        return target if target == root or root in target.parents else None

    async def _work_dir(self, request: Request, body: Any) -> Response:
        sandbox = self._sandbox(request)
        if sandbox is None:
            return self._missing(request)
        return JSONResponse({"dir": str(sandbox.root.resolve())})

    async def _execute(self, request: Request, body: Any) -> Response:
        sandbox = self._sandbox(request)
        if sandbox is None:
            return self._missing(request)
        body = body or {}
        cwd = self._resolve(sandbox, body.get("cwd"))
        if cwd is None or not cwd.is_dir():
            return _error(400, f"cwd {body.get('cwd')!r} is not a directory", source=DAEMON)
        timeout = float(body.get("timeout") or 10)
        argv = ["bash", "-c", str(body.get("command", ""))]
        outcome = await asyncio.to_thread(
            _run, argv, cwd, self._env(sandbox, body.get("envs")), timeout
        )
        return self._process_response(outcome, timeout)

    async def _code_run(self, request: Request, body: Any) -> Response:
        sandbox = self._sandbox(request)
        if sandbox is None:
            return self._missing(request)
        body = body or {}
        if body.get("language") != "python":
            return _error(400, f"language {body.get('language')!r} is not served", source=DAEMON)
        sandbox.runs += 1
        script = sandbox.root / f".standin-run-{sandbox.runs}.py"
        script.write_text(str(body.get("code", "")), encoding="utf-8")
        timeout = float(body.get("timeout") or self.default_timeout_s)
        argv = [sys.executable, str(script), *[str(a) for a in body.get("argv") or []]]
        try:
            outcome = await asyncio.to_thread(
                _run, argv, sandbox.root, self._env(sandbox, body.get("envs")), timeout
            )
        finally:
            script.unlink(missing_ok=True)
        return self._process_response(outcome, timeout)

    def _process_response(self, outcome: _Outcome, timeout: float) -> Response:
        if outcome.exit_code is None:
            return _error(
                408,
                f"process timed out after {timeout:g} s",
                code="PROCESS_EXECUTION_TIMEOUT",
                source=DAEMON,
            )
        return JSONResponse({"exitCode": outcome.exit_code, "result": outcome.output})

    async def _upload(self, request: Request, body: Any) -> Response:
        sandbox = self._sandbox(request)
        if sandbox is None:
            return self._missing(request)
        async with request.form() as form:  # closes the spooled upload files
            i = 0
            while f"files[{i}].path" in form:
                dest = self._resolve(sandbox, str(form[f"files[{i}].path"]))
                upload = form.get(f"files[{i}].file")
                if dest is None or upload is None or isinstance(upload, str):
                    message = f"files[{i}] is outside the sandbox or has no file"
                    return _error(400, message, source=DAEMON)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(await upload.read())
                i += 1
        if i == 0:
            return _error(400, "no files in the upload", source=DAEMON)
        return Response(status_code=200)

    async def _clone(self, request: Request, body: Any) -> Response:
        sandbox = self._sandbox(request)
        if sandbox is None:
            return self._missing(request)
        body = body or {}
        url = str(body.get("url") or "")
        if not (url.startswith("file://") or url.startswith("/")):
            return _error(
                400, "the stand-in clones only local repositories (a path or file:// URL)"
            )
        dest = self._resolve(sandbox, body.get("path"))
        if dest is None:
            return _error(400, f"path {body.get('path')!r} is outside the sandbox", source=DAEMON)
        argv = ["git", "-c", "protocol.file.allow=always", "clone", "--quiet"]
        if body.get("branch"):
            argv += ["--branch", str(body["branch"])]
        if body.get("depth"):
            argv += ["--depth", str(int(body["depth"]))]
        env = self._env(sandbox, None)
        outcome = await asyncio.to_thread(_run, [*argv, url, str(dest)], sandbox.root, env, 60)
        if outcome.exit_code == 0 and body.get("commit_id"):
            checkout = ["git", "-C", str(dest), "checkout", "--quiet", str(body["commit_id"])]
            outcome = await asyncio.to_thread(_run, checkout, sandbox.root, env, 60)
        if outcome.exit_code == 0:
            return Response(status_code=200)
        shutil.rmtree(dest, ignore_errors=True)
        return self._git_error(outcome.output)

    def _git_error(self, output: str) -> Response:
        text = output.strip()
        lowered = text.lower()
        if "remote branch" in lowered and "not found" in lowered:
            return _error(404, text, code="GIT_BRANCH_NOT_FOUND", source=DAEMON)
        if "did not match" in lowered or "reference is not a tree" in lowered:
            return _error(404, text, source=DAEMON)
        if "does not appear to be a git repository" in lowered or "does not exist" in lowered:
            return _error(404, text, code="GIT_REPO_NOT_FOUND", source=DAEMON)
        return _error(400, text or "git clone failed", source=DAEMON)
