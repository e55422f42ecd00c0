"""Hostile code in local sandboxes: each attack is contained, reported, and leaves the provider able
to make a healthy sandbox.

No Ray: a ``LocalProvider`` is driven directly on the test's event loop. The tests run as root, so
every sandbox is a process with a uid of its own (``SANDBOX_UIDS``), in its own network namespace,
with resource limits (the OS wall), and its code runs under the runner's audit hook (the hook
wall). ``ATTACKS`` are stopped by the hook; ``OS_WALL`` repeats the dangerous ones after switching
the hook off from inside the sandbox (which the product does not prevent: see the xfail cases) to
check that the OS wall holds on its own.

Everything the attacks aim at is the sandbox itself or something set up here: files in
``tmp_path`` and in a directory made under the system temp folder, a listener on 127.0.0.1, and
this test process (the sandbox's parent), which must survive and receive no signal. The provider
SIGKILLs whatever runs under a uid it hands out, so the module refuses to run while another
server's sandboxes hold uids of that range on this host.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any

import psutil
import pytest

from fleet_rlm.sandbox.limits import SANDBOX_UIDS, SandboxLimits
from fleet_rlm.sandbox.local import LocalProvider, LocalSandbox
from fleet_rlm.sandbox.protocol import ExecResult, ResultKind, SandboxSpec

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not sys.platform.startswith("linux"),
    reason="the local sandbox drops to a uid of its own in its own network namespace only as root",
)

ROOT = Path(__file__).resolve().parents[2]
LIMITS = SandboxLimits(
    cpu_s=30, memory_mb=384, file_mb=4, max_procs=32, output_bytes=64 * 1024, exec_timeout_s=10
)
SECRET_ENV = "FLEET_HOSTILE_TEST_TOKEN"
SECRET = "sk-hostile-7f3a9c1e-do-not-leak"
# The runner's private copy of its stdout: fds 0-2 are taken, so os.dup(0) is 3 and os.dup(1) is 4.
CHANNEL_OUT_FD = 4
# Switches the audit hook off from inside the sandbox: the runner is ``__main__`` and the hook
# reads its rules from that module's globals at every event.
HOOK_OFF = """\
import sys
_runner = sys.modules["__main__"]
_runner.READ_ROOTS, _runner.WORKDIR = ("/",), "/"
_runner.DENIED_EVENTS.clear()
_runner.DENIED_IMPORTS.clear()
print("HOOK-OFF")
"""


async def no_tools(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    raise AssertionError(f"no tool was offered, yet {name} was called")


@dataclass
class Targets:
    """What the attacks aim at, all made by this module; ``$names`` in attack code refer to it."""

    secret_file: Path  # in tmp_path (a root-only directory), holds SECRET
    tmp_target: Path  # in tmp_path; must never be created
    outside_secret: Path  # world-readable, in a world-traversable directory, holds SECRET
    outside_target: Path  # in a world-writable directory; must never be created
    repo_file: Path
    listener: socket.socket
    signals: list[int]

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def code(self, template: str) -> str:
        names = {k: str(v) for k, v in vars(self).items() if isinstance(v, Path)}
        return Template(template).substitute(names, port=self.port)

    def sweep(self) -> list[str]:
        """What reached the host: files made, connections, signals; cleared for the next case."""
        reached = [f"created {p}" for p in (self.tmp_target, self.outside_target) if p.exists()]
        for path in (self.tmp_target, self.outside_target):
            path.unlink(missing_ok=True)
        while select.select([self.listener], [], [], 0)[0]:
            self.listener.accept()[0].close()
            reached.append("a connection to the listener on 127.0.0.1")
        reached += [f"signal {signum} to this process" for signum in self.signals]
        self.signals.clear()
        return reached


def foreign_sandbox_processes() -> list[psutil.Process]:
    """Processes holding sandbox uids that this process did not start (through its own Ray too)."""
    found = []
    for process in psutil.process_iter(["uids", "status"]):
        uids = process.info["uids"]
        if uids is None or uids.real not in SANDBOX_UIDS:
            continue
        if process.info["status"] == psutil.STATUS_ZOMBIE:  # killed, waiting for init to reap it
            continue
        with contextlib.suppress(psutil.Error):
            if os.getpid() not in {parent.pid for parent in process.parents()}:
                found.append(process)
    return found


@pytest.fixture(scope="module", autouse=True)
def no_other_servers_sandboxes() -> None:
    """Creating a sandbox kills what runs under its uid: never another server's sandbox."""
    if others := foreign_sandbox_processes():
        pytest.skip(f"{len(others)} processes of another server hold sandbox uids on this host")


@pytest.fixture(scope="module")
def base_dir() -> Iterator[Path]:
    # Under the system temp folder, as in the product: sandbox uids must traverse every ancestor.
    base = Path(tempfile.mkdtemp(prefix="fleet-hostile-"))
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=True)  # copes with any depth


@pytest.fixture(scope="module")
def provider(base_dir: Path) -> Iterator[LocalProvider]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SECRET_ENV, SECRET)
        yield LocalProvider(LIMITS, base_dir)


@pytest.fixture(scope="module")
def targets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Targets]:
    private = tmp_path_factory.mktemp("private")
    secret_file = private / "secret.txt"
    secret_file.write_text(SECRET)
    shared = Path(tempfile.mkdtemp(prefix="fleet-hostile-outside-"))
    os.chmod(shared, 0o777)
    outside_secret = shared / "secret.txt"
    outside_secret.write_text(SECRET)
    os.chmod(outside_secret, 0o644)
    arrived: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: arrived.append(signum))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield Targets(
            secret_file=secret_file,
            tmp_target=private / "written.txt",
            outside_secret=outside_secret,
            outside_target=shared / "written.txt",
            repo_file=ROOT / "pyproject.toml",
            listener=listener,
            signals=arrived,
        )
    signal.signal(signal.SIGUSR1, previous)
    shutil.rmtree(shared)


@pytest.fixture
async def sandbox(provider: LocalProvider) -> AsyncIterator[LocalSandbox]:
    box = await provider.create(SandboxSpec())
    yield box
    await box.close()


async def run(box: LocalSandbox, code: str, timeout_s: float = 10.0, **kw: Any) -> ExecResult:
    return await box.execute(
        code,
        kw.get("variables", {}),
        kw.get("tools", []),
        kw.get("output_fields"),
        kw.get("on_tool", no_tools),
        timeout_s,
    )


async def assert_healthy(box: LocalSandbox) -> None:
    assert await box.healthy()
    result = await run(box, "print(1+1)")
    assert (result.kind, result.stdout) == ("result", "2\n"), result


async def assert_closed(box: LocalSandbox) -> None:
    """Closed: the process is reaped, its group empties, its directory is gone."""
    await box.close()
    assert box.process.returncode is not None
    assert not box.workdir.exists()
    for _ in range(50):  # children killed with the group are reaped by init, not at once
        try:
            os.killpg(box.process.pid, 0)  # signal 0: only asks whether the group has members
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"processes of sandbox {box.sandbox_id} outlived close")


# --- the provider and the sandbox's own features ----------------------------------------------


def test_isolation_report_says_own_uid_own_network_and_limits(provider: LocalProvider) -> None:
    assert provider.isolation() == {
        "provider": "local",
        "python": "/usr/bin/python3",
        "user": "a uid of its own per sandbox",
        "network": "none (own network namespace)",
        "audit_hook": True,
        "rlimits": ["cpu", "address space", "file size", "processes"],
    }


async def test_each_sandbox_has_its_own_uid_the_limits_and_no_host_descriptors(
    provider: LocalProvider,
) -> None:
    code = """\
import os, resource
fds = [fd for fd in range(256) if os.path.exists(f"/proc/self/fd/{fd}")]
print(os.getuid(), os.getgid(), os.getgroups())
names = ("CPU", "AS", "FSIZE", "NPROC")
print([resource.getrlimit(getattr(resource, "RLIMIT_" + name))[0] for name in names])
print(sorted({os.readlink(f"/proc/self/fd/{fd}").split(":")[0] for fd in fds}))
"""
    boxes = [await provider.create(SandboxSpec()) for _ in range(2)]
    try:
        seen = [(await run(box, code)).stdout.splitlines() for box in boxes]
    finally:
        for box in boxes:
            await assert_closed(box)
    uids = [int(lines[0].split()[0]) for lines in seen]
    assert uids[0] != uids[1] and all(uid in SANDBOX_UIDS for uid in uids), seen
    mb = 1024 * 1024
    limits = [LIMITS.cpu_s, LIMITS.memory_mb * mb, LIMITS.file_mb * mb, LIMITS.max_procs]
    for uid, lines in zip(uids, seen, strict=True):
        assert lines == [f"{uid} {uid} []", str(limits), "['/dev/null', 'pipe']"], lines


async def test_variables_persist_across_executes(sandbox: LocalSandbox) -> None:
    first = await run(sandbox, "total = base * 2", variables={"base": 20})
    assert first.kind == "result"
    second = await run(sandbox, "total + 2")
    assert (second.kind, second.stdout) == ("result", "42\n")


async def test_tool_call_round_trips_a_value_and_an_error(sandbox: LocalSandbox) -> None:
    calls: list[tuple[str, list[Any], dict[str, Any]]] = []

    async def on_tool(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        calls.append((name, args, kwargs))
        if args == ["boom"]:
            raise ValueError("no such page")
        return {"pages": [1, 2], "query": args[0], "limit": kwargs["limit"]}

    code = """\
found = lookup("cats", limit=2)
print(found["pages"], found["query"], found["limit"])
try:
    lookup("boom")
except RuntimeError as exc:
    print("error:", exc)
"""
    result = await run(sandbox, code, tools=["lookup"], on_tool=on_tool)
    assert result.kind == "result", result
    assert result.stdout == "[1, 2] cats 2\nerror: lookup failed: ValueError: no such page\n"
    assert calls == [("lookup", ["cats"], {"limit": 2}), ("lookup", ["boom"], {})]


async def test_submit_returns_final_with_the_fields(sandbox: LocalSandbox) -> None:
    named = await run(sandbox, "SUBMIT(answer='42', sources=['a'])")
    assert (named.kind, named.value) == ("final", {"answer": "42", "sources": ["a"]})
    fields = [{"name": "answer"}, {"name": "confidence"}]
    positional = await run(sandbox, "SUBMIT('42', 0.9)", output_fields=fields)
    assert (positional.kind, positional.value) == ("final", {"answer": "42", "confidence": 0.9})
    assert positional.observation() == "SUBMIT({'answer': '42', 'confidence': 0.9})"


# --- attacks the audit hook stops ---------------------------------------------------------------


@dataclass(frozen=True)
class Attack:
    code: str  # a string.Template over Targets' paths and $port
    kind: ResultKind
    says: str  # must appear in the error (or, for a result, in stdout)
    timeout_s: float = 10.0
    truncated: bool = False

    @property
    def broken(self) -> bool:
        return self.kind in ("limit", "crashed")


OUTSIDE = "is outside the working directory"

ATTACKS = {
    "endless-loop": Attack("while True:\n    pass", "limit", "timed out after 2 s", timeout_s=2),
    "memory-bomb": Attack(
        "def grow():\n    hoard = []\n    while True:\n        hoard.append(bytearray(10**7))\n"
        "grow()",
        "execution_error",
        "MemoryError",
    ),
    "fork-loop": Attack(
        "import os\nwhile True:\n    os.fork()", "execution_error", "os.fork is not allowed"
    ),
    "fork-via-subprocess": Attack(
        "import subprocess\nsubprocess.run(['/bin/sh', '-c', 'id'])",
        "execution_error",
        "importing _posixsubprocess is not allowed",
    ),
    "posix-spawn": Attack(
        "import os\nos.posix_spawn('/bin/true', ['true'], {})",
        "execution_error",
        "os.posix_spawn is not allowed",
    ),
    "exec": Attack(
        "import os\nos.execv('/bin/sh', ['sh'])", "execution_error", "os.exec is not allowed"
    ),
    "os-system": Attack(
        "__import__('os').system('id')", "execution_error", "os.system is not allowed"
    ),
    "thread-bomb": Attack(
        "import threading, time\nfor _ in range(10_000):\n"
        "    threading.Thread(target=time.sleep, args=(1,), daemon=True).start()",
        "execution_error",
        "can't start new thread",
    ),
    "100-MB-output": Attack(
        "chunk = 'x' * 1_000_000\nfor _ in range(100):\n    print(chunk)",
        "result",
        "more characters of output dropped",
        truncated=True,
    ),
    "host-environment": Attack("import os\nprint(sorted(os.environ))", "result", "PATH"),
    "parent-environ": Attack(
        "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())",
        "execution_error",
        f"/environ {OUTSIDE}",
    ),
    "etc-passwd": Attack(
        "print(open('/etc/passwd').read())", "execution_error", f"reading /etc/passwd {OUTSIDE}"
    ),
    "file-in-tmp-path": Attack(
        "print(open('$secret_file').read())", "execution_error", f"secret.txt {OUTSIDE}"
    ),
    "world-readable-file": Attack(
        "print(open('$outside_secret').read())", "execution_error", f"secret.txt {OUTSIDE}"
    ),
    "repo-file": Attack(
        "print(open('$repo_file').read())", "execution_error", f"pyproject.toml {OUTSIDE}"
    ),
    "write-tmp-path": Attack(
        "open('$tmp_target', 'w').write('x')", "execution_error", f"writing $tmp_target {OUTSIDE}"
    ),
    "write-world-writable-dir": Attack(
        "import os\nos.close(os.open('$outside_target', os.O_CREAT | os.O_WRONLY))",
        "execution_error",
        f"writing $outside_target {OUTSIDE}",
    ),
    "socket": Attack(
        "import socket\nsocket.create_connection(('127.0.0.1', $port), timeout=1)",
        "execution_error",
        "importing _socket is not allowed",
    ),
    "kill-parent": Attack(
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "execution_error",
        "os.kill is not allowed",
    ),
    "killpg-parent": Attack(
        "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "execution_error",
        "os.killpg is not allowed",
    ),
    "signal-parent": Attack(
        "import os, signal\nos.kill(os.getppid(), signal.SIGUSR1)",
        "execution_error",
        "os.kill is not allowed",
    ),
    "ctypes": Attack(
        "import ctypes, os\nctypes.CDLL(None).kill(os.getppid(), 9)",
        "execution_error",
        "importing ctypes is not allowed",
    ),
    "file-size-limit": Attack(
        "open('big', 'wb').write(b'x' * (8 * 1024 * 1024))", "execution_error", "File too large"
    ),
    "delete-workdir-parent": Attack(
        "import shutil\nshutil.rmtree('..')",
        "execution_error",
        "shutil.rmtree outside the working directory",
    ),
    "delete-own-workdir": Attack(
        "import os\nos.rmdir(os.getcwd())", "execution_error", "Permission denied"
    ),
    "symlink-escape": Attack(
        "import os\nos.symlink('/etc', 'x')\nprint(open('x/passwd').read())",
        "execution_error",
        "os.symlink outside the working directory",
    ),
    "hard-link-escape": Attack(
        "import os\nos.link('$outside_secret', 'x')",
        "execution_error",
        "os.link outside the working directory",
    ),
    "chdir-out": Attack("import os\nos.chdir('/')", "execution_error", "os.chdir is not allowed"),
    "system-exit": Attack("raise SystemExit(4)", "execution_error", "SystemExit: 4"),
    "exit-process": Attack(
        "import os\nos._exit(3)", "crashed", "the sandbox process exited with status 3"
    ),
    "kill-itself": Attack(
        "import signal\nsignal.raise_signal(signal.SIGKILL)", "crashed", "SIGKILL (killed)"
    ),
    "garbage-on-the-channel": Attack(
        f"import os\nos.write({CHANNEL_OUT_FD}, b'not json\\n')",
        "crashed",
        "the sandbox broke its protocol",
    ),
    "submit-over-the-line-limit": Attack(
        "SUBMIT(answer='x' * 68_000_000)", "crashed", "the sandbox broke its protocol"
    ),
    "json-array-on-the-channel": Attack(
        f"import os\nos.write({CHANNEL_OUT_FD}, b'[1]\\n')", "crashed", "not a message"
    ),
    "json-string-on-the-channel": Attack(
        f"import os\nos.write({CHANNEL_OUT_FD}, b'\"result\"\\n')", "crashed", "not a message"
    ),
}

MALFORMED_FRAME = (
    "LocalSandbox.execute raises instead of returning kind='crashed' (protocol.py: an execute never"
    " raises for anything the code did), and the pool's execute stream fails with it"
)
HOOK_GAP = "the audit hook can be bypassed from sandbox code"
HOOK_BYPASSES = [
    pytest.param(
        "import sys\nsys.modules['__main__'].READ_ROOTS = ('/',)\n"
        "print(open('$outside_secret').read())",
        "execution_error",
        OUTSIDE,
        id="rewrite-the-hooks-rules",
        marks=pytest.mark.xfail(
            strict=True,
            reason=f"{HOOK_GAP}: the runner is __main__, so sys.modules['__main__'] hands the code"
            " the hook's READ_ROOTS / WORKDIR / DENIED_EVENTS / DENIED_IMPORTS to rewrite",
        ),
    ),
    pytest.param(
        "import os\nos.makedirs('a/b')\nos.symlink('a/b', 'lib')\n"
        "usr = os.open('/usr', os.O_RDONLY)\n"
        "fd = os.open('lib/../../$outside_rel', os.O_RDONLY, dir_fd=usr)\nprint(os.read(fd, 100))",
        "execution_error",
        OUTSIDE,
        id="open-relative-to-a-dir-fd",
        marks=pytest.mark.xfail(
            strict=True,
            reason=f"{HOOK_GAP}: the open check resolves a relative path against the working"
            " directory and ignores dir_fd, so a directory fd from a read root (/usr) plus a"
            " symlink inside the working directory reaches any world-readable file",
        ),
    ),
    pytest.param(
        "import os\nos.mkfifo('$outside_target')",
        "execution_error",
        OUTSIDE,
        id="mkfifo-outside",
        marks=pytest.mark.xfail(
            strict=True,
            reason=f"{HOOK_GAP}: os.mkfifo (and os.mknod) raise no audit event the hook checks,"
            " so the code creates entries in any world-writable directory",
        ),
    ),
]

BAD_FRAMES = [
    pytest.param(
        f'import os\nos.write({CHANNEL_OUT_FD}, b\'{{"type": "tool_request"}}\\n\')',
        "crashed",
        "broke its protocol",
        id="tool-request-without-id",
    ),
    pytest.param(
        f"import os\nos.write({CHANNEL_OUT_FD}, b'[' * 100_000 + b'\\n')",
        "crashed",
        "broke its protocol",
        id="deeply-nested-json",
    ),
]


async def _contained(
    provider: LocalProvider, targets: Targets, attack: Attack, prefix: str = ""
) -> ExecResult:
    """Run ``attack`` in a fresh sandbox; check the report, the sandbox and the host after it."""
    box = await provider.create(SandboxSpec())
    try:
        result = await asyncio.wait_for(
            run(box, prefix + targets.code(attack.code), attack.timeout_s), attack.timeout_s + 15
        )
        if prefix and "HOOK-OFF" not in result.stdout:
            pytest.skip(f"the audit hook could not be switched off: {result}")
        assert result.kind == attack.kind, result
        says = targets.code(attack.says)
        assert says in (result.stdout if attack.kind == "result" else result.error or ""), result
        assert (result.truncated, result.broken) == (attack.truncated, attack.broken), result
        assert result.duration_ms < (attack.timeout_s + 5) * 1000
        for leak in (SECRET, SECRET_ENV, "root:x:0:0"):
            assert leak not in result.stdout and leak not in (result.error or ""), leak
        if attack.broken:
            assert not await box.healthy()
        else:
            await assert_healthy(box)
    finally:
        await assert_closed(box)
        reached = targets.sweep()
    assert reached == [], f"the attack reached the host: {reached}"
    assert psutil.Process().is_running()
    fresh = await provider.create(SandboxSpec())
    try:
        await assert_healthy(fresh)
    finally:
        await assert_closed(fresh)
    return result


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
async def test_attack_is_contained_and_reported(
    provider: LocalProvider, targets: Targets, attack: Attack
) -> None:
    result = await _contained(provider, targets, attack)
    if attack.truncated:
        assert len(result.stdout) < LIMITS.output_bytes + 100


@pytest.mark.parametrize(("code", "kind", "says"), BAD_FRAMES)
async def test_bad_frame_from_the_code_ends_the_execute_as_crashed(
    provider: LocalProvider, targets: Targets, code: str, kind: ResultKind, says: str
) -> None:
    await _contained(provider, targets, Attack(code, kind, says))


@pytest.mark.parametrize(("code", "kind", "says"), HOOK_BYPASSES)
async def test_hook_cannot_be_bypassed(
    provider: LocalProvider, targets: Targets, code: str, kind: ResultKind, says: str
) -> None:
    code = code.replace("$outside_rel", str(targets.outside_secret).lstrip("/"))
    await _contained(provider, targets, Attack(code, kind, says))


async def test_cpu_limit_stops_a_busy_loop(base_dir: Path) -> None:
    provider = LocalProvider(SandboxLimits(cpu_s=1, exec_timeout_s=20), base_dir)
    box = await provider.create(SandboxSpec())
    try:
        result = await run(box, "while True:\n    pass", timeout_s=20)
        assert result.kind == "crashed", result
        assert "SIGXCPU (CPU time limit)" in (result.error or "")
        assert result.broken and result.duration_ms < 10_000
    finally:
        await assert_closed(box)


async def test_close_removes_a_deeply_nested_workdir(provider: LocalProvider) -> None:
    box = await provider.create(SandboxSpec())
    code = """\
import os
fd = os.open(".", os.O_RDONLY)
for _ in range(1500):
    os.mkdir("d", dir_fd=fd)
    deeper = os.open("d", os.O_RDONLY, dir_fd=fd)
    os.close(fd)
    fd = deeper
"""
    try:
        assert (await run(box, code)).kind == "result"
        await box.close()
        assert not box.workdir.exists()
    finally:
        subprocess.run(["rm", "-rf", str(box.workdir)], check=True)


# --- the OS wall alone, with the hook switched off ----------------------------------------------

OS_WALL = {
    "parent-environ": Attack(
        "import os\nprint(open(f'/proc/{os.getppid()}/environ', 'rb').read())",
        "execution_error",
        "Permission denied",
    ),
    "file-in-tmp-path": Attack(
        "print(open('$secret_file').read())", "execution_error", "Permission denied"
    ),
    "write-tmp-path": Attack(
        "open('$tmp_target', 'w').write('x')", "execution_error", "Permission denied"
    ),
    "socket-to-loopback-listener": Attack(
        "import socket\nsocket.create_connection(('127.0.0.1', $port), timeout=1)",
        "execution_error",
        "Network is unreachable",
    ),
    "kill-parent": Attack(
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "execution_error",
        "Operation not permitted",
    ),
    "killpg-parent": Attack(
        "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)",
        "execution_error",
        "Operation not permitted",
    ),
    "signal-parent": Attack(
        "import os, signal\nos.kill(os.getppid(), signal.SIGUSR1)",
        "execution_error",
        "Operation not permitted",
    ),
    "ctypes-kill-parent": Attack(
        "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "if libc.kill(os.getppid(), 9) != 0:\n    raise OSError(ctypes.get_errno(), 'kill')",
        "execution_error",
        "[Errno 1] kill",
    ),
    "become-root": Attack("import os\nos.setuid(0)", "execution_error", "Operation not permitted"),
    "fork-bomb": Attack(
        "import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(3)\n"
        "        os._exit(0)",
        "execution_error",
        "Resource temporarily unavailable",
    ),
    "delete-workdir-parent": Attack(
        "import shutil\nshutil.rmtree('..')", "execution_error", "Permission denied"
    ),
}


@pytest.mark.parametrize("attack", OS_WALL.values(), ids=OS_WALL.keys())
async def test_os_wall_holds_without_the_hook(
    provider: LocalProvider, targets: Targets, attack: Attack
) -> None:
    await _contained(provider, targets, attack, prefix=HOOK_OFF)


async def test_one_sandbox_cannot_reach_another(provider: LocalProvider) -> None:
    victim = await provider.create(SandboxSpec())
    attacker = await provider.create(SandboxSpec())
    try:
        await run(victim, "open('notes.txt', 'w').write('victim data')")
        pid = victim.process.pid
        code = (
            HOOK_OFF
            + f"""\
import os
reached = []
for name, attempt in (
    ("read", lambda: open("/proc/{pid}/cwd/notes.txt").read()),
    ("write", lambda: open("/proc/{pid}/cwd/planted.txt", "w").write("x")),
    ("signal", lambda: os.kill({pid}, 0)),
):
    try:
        attempt()
        reached.append(name)
    except OSError:
        pass
print(reached)
"""
        )
        result = await run(attacker, code)
        assert "HOOK-OFF" in result.stdout, result
        assert result.stdout.splitlines()[-1] == "[]", result
    finally:
        await assert_closed(attacker)
        await assert_closed(victim)


ESCAPE = """\
import os, time
read_end, write_end = os.pipe()
if os.fork() == 0:
    os.setsid()  # leaves the sandbox's process group, which is all that close kills
    pid = os.fork()
    if pid == 0:
        if $close_pipes:
            os.closerange(3, 256)  # lets go of the host's pipes too
        time.sleep(30)
        os._exit(0)
    open("escaped.pid", "w").write(str(pid))
    os._exit(0)
os.wait()
print(open("escaped.pid").read())
"""


class Escapee:
    """The process an ESCAPE starts (through the sandbox, so this test started it): killed after."""

    def __init__(self, workdir: Path) -> None:
        self.pid_file = workdir / "escaped.pid"
        self.process: psutil.Process | None = None

    def find(self) -> psutil.Process | None:
        if self.process is None and self.pid_file.exists():
            with contextlib.suppress(ValueError, psutil.NoSuchProcess):
                self.process = psutil.Process(int(self.pid_file.read_text()))
        return self.process

    def alive(self) -> bool:
        process = self.find()
        return process is not None and process.is_running() and process.status() != "zombie"

    def kill(self) -> None:
        process = self.process
        if self.alive() and process is not None and process.uids().real in SANDBOX_UIDS:
            process.kill()


async def test_no_process_outlives_close(provider: LocalProvider) -> None:
    box = await provider.create(SandboxSpec())
    escapee = Escapee(box.workdir)
    try:
        result = await run(box, HOOK_OFF + Template(ESCAPE).substitute(close_pipes=True))
        assert "HOOK-OFF" in result.stdout, result
        assert escapee.find() is not None
        await box.close()
        await asyncio.sleep(0.2)
        assert not escapee.alive()
    finally:
        escapee.kill()
        await box.close()


async def test_wall_clock_limit_holds_when_a_child_keeps_the_pipes(
    provider: LocalProvider,
) -> None:
    box = await provider.create(SandboxSpec())
    escapee = Escapee(box.workdir)
    code = HOOK_OFF + Template(ESCAPE).substitute(close_pipes=False) + "while True:\n    pass\n"
    watcher = asyncio.get_running_loop().create_task(_watch(escapee))
    try:
        result = await asyncio.wait_for(run(box, code, timeout_s=2), 10)
        assert result.kind == "limit", result
        assert result.duration_ms < 8000
    finally:
        watcher.cancel()
        escapee.kill()
        await box.close()


async def _watch(escapee: Escapee) -> None:
    """Note the escapee's pid while the sandbox's directory still exists."""
    while escapee.find() is None:
        await asyncio.sleep(0.05)


# --- uids handed out by the provider ------------------------------------------------------------


async def test_a_second_provider_leaves_the_first_ones_sandboxes_alone(
    provider: LocalProvider, base_dir: Path
) -> None:
    first = await provider.create(SandboxSpec())
    second = await LocalProvider(LIMITS, base_dir).create(SandboxSpec())
    try:
        assert first.uid != second.uid
        await assert_healthy(first)
    finally:
        await first.close()
        await second.close()


@pytest.mark.xfail(
    strict=True,
    reason="uids are reused: with the hook off, a file a sandbox leaves outside its working"
    " directory (in any world-writable directory) is readable by the next sandbox given its uid",
)
async def test_the_next_sandbox_with_a_uid_cannot_read_what_the_last_left(
    provider: LocalProvider, targets: Targets
) -> None:
    left = targets.outside_secret.parent / "left-behind.txt"
    code = f"import os\nos.write(os.open('{left}', os.O_CREAT | os.O_WRONLY, 0o600), b'run 1')\n"
    try:
        first = await provider.create(SandboxSpec())
        written = await run(first, HOOK_OFF + code)
        await assert_closed(first)
        assert "HOOK-OFF" in written.stdout and left.exists(), written
        second = await provider.create(SandboxSpec())
        try:
            read = await run(second, HOOK_OFF + f"print(open('{left}').read())")
        finally:
            await assert_closed(second)
        assert "run 1" not in read.stdout, (first.uid, second.uid, read)
    finally:
        left.unlink(missing_ok=True)
