"""The Daytona provider and ``fleet-rlm daytona-smoke``, through the real SDK, on 127.0.0.1.

The SDK talks to the stand-in server (``tests/standins/daytona_server.py``), which runs the
sandboxes' commands for real in temp directories. No Ray is needed.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fleet_rlm.config import Settings
from fleet_rlm.sandbox.daytona import DaytonaProvider, DaytonaSandboxError
from fleet_rlm.sandbox.protocol import Sandbox, SandboxProvider, SandboxSpec
from tests.standins.daytona_server import DaytonaStandIn

pytest_plugins = ("tests.standins.conftest_daytona",)

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / ".venv" / "bin" / "fleet-rlm"


async def _no_tools(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    raise AssertionError("a Daytona sandbox never calls back to the host")


def _git(repo: Path, *args: str) -> str:
    command = ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", "-C", str(repo)]
    done = subprocess.run([*command, *args], check=True, capture_output=True, text=True)
    return done.stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A local repository: README.md on ``main``, then notes.txt in a second commit."""
    repo = tmp_path / "origin"
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    (repo / "README.md").write_text("hello from the repo\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    (repo / "notes.txt").write_text("second commit\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "second")
    return repo


def _settings(server: DaytonaStandIn, api_key: str | None = None) -> Settings:
    return Settings(
        daytona_api_key=api_key or server.api_key,
        daytona_api_url=server.api_url,
        daytona_target="standin",
    )


@pytest.fixture
async def provider(daytona_standin: DaytonaStandIn) -> AsyncIterator[DaytonaProvider]:
    made = DaytonaProvider(_settings(daytona_standin), max_output_bytes=2000)
    yield made
    await made.aclose()


async def test_lifecycle_through_the_sdk(
    daytona_standin: DaytonaStandIn, provider: DaytonaProvider, git_repo: Path
) -> None:
    assert isinstance(provider, SandboxProvider)
    spec = SandboxSpec(repo_url=f"file://{git_repo}", repo_ref="main", labels={"t": "1"})
    sandbox = await provider.create(spec)
    assert isinstance(sandbox, Sandbox)
    sid = sandbox.sandbox_id
    try:
        first = await sandbox.execute(
            "x = 41\nimport os\ndef double(v):\n    return 2 * v\nprint(sorted(os.listdir('.')))",
            {},
            [],
            None,
            _no_tools,
            10,
        )
        assert first.kind == "result", first
        assert "README.md" in first.stdout and "notes.txt" in first.stdout

        second = await sandbox.execute(
            "print(x + 1, double(x), os.sep)", {}, [], None, _no_tools, 10
        )
        assert second.kind == "result", second
        assert second.stdout.strip() == "42 82 /"

        shown = await sandbox.execute("x * 2", {}, [], None, _no_tools, 10)
        assert shown.stdout.strip() == "82"  # a trailing expression prints, as locally

        await sandbox.upload("data/doc.txt", b"uploaded bytes")
        read = await sandbox.execute(
            "print(open('data/doc.txt').read(), n)", {"n": 7}, [], None, _no_tools, 10
        )
        assert read.stdout.strip() == "uploaded bytes 7"

        final = await sandbox.execute(
            "SUBMIT(answer=x + 1)", {}, [], [{"name": "answer", "type": "int"}], _no_tools, 10
        )
        assert final.kind == "final" and final.value == {"answer": 42}
        positional = await sandbox.execute("SUBMIT(x)", {}, [], [{"name": "answer"}], _no_tools, 10)
        assert positional.value == {"answer": 41}

        tool = await sandbox.execute("llm_query('hi')", {}, ["llm_query"], None, _no_tools, 10)
        assert tool.kind == "execution_error"
        assert "llm_query is not available on the daytona provider" in (tool.error or "")
        assert "SANDBOX_PROVIDER=local" in (tool.error or "")

        assert await sandbox.healthy()
    finally:
        await sandbox.close()
    await sandbox.close()  # idempotent: no second DELETE
    assert not await sandbox.healthy()

    calls = daytona_standin.calls()
    for expected in (
        "POST /api/sandbox",
        f"GET /api/sandbox/{sid}",
        f"POST /toolbox/{sid}/git/clone",
        f"POST /toolbox/{sid}/files/bulk-upload",
        f"POST /toolbox/{sid}/process/code-run",
        f"DELETE /api/sandbox/{sid}",
    ):
        assert expected in calls, (expected, calls)
    assert calls.count(f"DELETE /api/sandbox/{sid}") == 1
    create = next(r for r in daytona_standin.requests if r.path == "/api/sandbox")
    assert create.user_agent.startswith("sdk-python-async/")  # the SDK's own request
    assert create.body["labels"]["t"] == "1" and create.body["target"] == "standin"
    clone = next(r for r in daytona_standin.requests if r.path.endswith("/git/clone"))
    assert clone.body["branch"] == "main"
    assert daytona_standin.deleted == [sid] and not daytona_standin.sandboxes


async def test_clone_at_a_commit(
    daytona_standin: DaytonaStandIn, provider: DaytonaProvider, git_repo: Path
) -> None:
    first_commit = _git(git_repo, "rev-list", "--max-parents=0", "HEAD")
    sandbox = await provider.create(SandboxSpec(repo_url=str(git_repo), repo_ref=first_commit))
    try:
        listed = await sandbox.execute(
            "import os; print(sorted(os.listdir('.')))", {}, [], None, _no_tools, 10
        )
        assert "README.md" in listed.stdout and "notes.txt" not in listed.stdout
    finally:
        await sandbox.close()


async def test_limits_errors_and_output_cap(provider: DaytonaProvider) -> None:
    sandbox = await provider.create(SandboxSpec())
    try:
        await sandbox.execute("kept = 'yes'", {}, [], None, _no_tools, 10)
        spin = await sandbox.execute("while True:\n    pass", {}, [], None, _no_tools, 1)
        assert spin.kind == "limit" and not spin.broken
        syntax = await sandbox.execute("def (", {}, [], None, _no_tools, 10)
        assert syntax.kind == "syntax_error"
        failed = await sandbox.execute("1 / 0", {}, [], None, _no_tools, 10)
        assert failed.kind == "execution_error" and "ZeroDivisionError" in (failed.error or "")
        assert "driver" not in (failed.error or "")
        loud = await sandbox.execute("print('a' * 10_000)", {}, [], None, _no_tools, 10)
        assert loud.truncated and len(loud.stdout.encode()) <= 2000
        after = await sandbox.execute("print(kept)", {}, [], None, _no_tools, 10)
        assert after.stdout.strip() == "yes"
    finally:
        await sandbox.close()


async def test_wrong_key_is_an_auth_error(daytona_standin: DaytonaStandIn) -> None:
    provider = DaytonaProvider(_settings(daytona_standin, api_key="not-the-key"))
    with pytest.raises(DaytonaSandboxError) as caught:
        await provider.create(SandboxSpec())
    await provider.aclose()
    assert caught.value.category == "auth"
    assert "DAYTONA_API_KEY" in caught.value.message
    assert [r.status for r in daytona_standin.requests] == [401]


async def test_unreachable_api_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings(daytona_api_key="k", daytona_api_url=f"http://127.0.0.1:{port}/api")
    provider = DaytonaProvider(settings)
    with pytest.raises(DaytonaSandboxError) as caught:
        await provider.create(SandboxSpec())
    await provider.aclose()
    assert caught.value.category == "unavailable"
    assert "DAYTONA_API_URL" in caught.value.message


async def test_create_timeout_deletes_the_stray_sandbox(daytona_standin: DaytonaStandIn) -> None:
    daytona_standin.polls_until_started = 10**6  # never starts
    provider = DaytonaProvider(_settings(daytona_standin), create_timeout_s=1.5)
    with pytest.raises(DaytonaSandboxError) as caught:
        await provider.create(SandboxSpec())
    await provider.aclose()
    assert caught.value.category == "timeout"
    assert len(daytona_standin.deleted) == 1 and not daytona_standin.sandboxes


async def test_missing_repo_fails_and_deletes_the_sandbox(
    daytona_standin: DaytonaStandIn, provider: DaytonaProvider, tmp_path: Path
) -> None:
    with pytest.raises(DaytonaSandboxError) as caught:
        await provider.create(SandboxSpec(repo_url=f"file://{tmp_path}/missing"))
    assert caught.value.category == "not_found"
    assert len(daytona_standin.deleted) == 1 and not daytona_standin.sandboxes


def test_settings_are_checked_and_the_error_crosses_processes() -> None:
    with pytest.raises(DaytonaSandboxError) as caught:
        DaytonaProvider(Settings(daytona_api_key=None, daytona_api_url=None))
    assert caught.value.category == "config"
    assert "DAYTONA_API_KEY and DAYTONA_API_URL" in caught.value.message
    copy = pickle.loads(pickle.dumps(caught.value))
    assert (copy.category, copy.code, copy.message) == (
        "config",
        "daytona_config",
        caught.value.message,
    )


def test_isolation_report(daytona_standin: DaytonaStandIn) -> None:
    report = DaytonaProvider(_settings(daytona_standin)).isolation()
    assert report["provider"] == "daytona" and report["network"] == "provider-managed"
    assert report["host_tools"] is False


async def test_the_sdk_connects_only_to_the_standin(
    daytona_standin: DaytonaStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[Any] = []
    real_connect = socket.socket.connect

    def recording_connect(self: socket.socket, address: Any) -> Any:
        seen.append(address)
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", recording_connect)
    provider = DaytonaProvider(_settings(daytona_standin))
    client = provider._sdk()
    assert client._event_dispatcher is None  # no socket.io connection
    await asyncio.sleep(0.3)
    assert seen == [], "constructing the client opened a connection"

    sandbox = await provider.create(SandboxSpec())
    await sandbox.execute("print(1)", {}, [], None, _no_tools, 10)
    await sandbox.close()
    await provider.aclose()
    assert seen and {address[0] for address in seen} == {"127.0.0.1"}


def _smoke(server: DaytonaStandIn, cwd: Path, *args: str, key: str | None = None) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAYTONA_")}
    env.update(
        DAYTONA_API_KEY=key or server.api_key,
        DAYTONA_API_URL=server.api_url,
        DAYTONA_TARGET="standin",
        NO_PROXY="127.0.0.1,localhost",
    )
    done = subprocess.run(
        [str(CLI), "daytona-smoke", *args],
        cwd=cwd,  # away from any .env the SDK would read in the repository root
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, json.loads(done.stdout), done.stderr


def test_smoke_passes(daytona_standin: DaytonaStandIn, git_repo: Path, tmp_path: Path) -> None:
    code, report, stderr = _smoke(daytona_standin, tmp_path, "--repo", f"file://{git_repo}")
    assert code == 0, (report, stderr)
    assert report["ok"] and report["failed_phase"] is None and report["error"] is None
    assert list(report["phases"]) == [
        "config",
        "create",
        "clone",
        "execute_1",
        "execute_2",
        "cleanup",
    ]
    assert all(phase["ok"] for phase in report["phases"].values())
    assert all(isinstance(phase["duration_ms"], int) for phase in report["phases"].values())
    assert "README.md" in report["phases"]["execute_1"]["stdout"]
    assert report["phases"]["execute_2"]["stdout"].strip() == "42"
    assert len(daytona_standin.deleted) == 1 and not daytona_standin.sandboxes


def test_smoke_with_a_wrong_key(
    daytona_standin: DaytonaStandIn, git_repo: Path, tmp_path: Path
) -> None:
    code, report, _ = _smoke(
        daytona_standin, tmp_path, "--repo", f"file://{git_repo}", key="wrong-key"
    )
    assert code == 1
    assert (report["ok"], report["failed_phase"], report["error_category"]) == (
        False,
        "create",
        "auth",
    )
    assert "DAYTONA_API_KEY" in report["error"]


def test_smoke_with_a_missing_repo(daytona_standin: DaytonaStandIn, tmp_path: Path) -> None:
    code, report, _ = _smoke(daytona_standin, tmp_path, "--repo", f"file://{tmp_path}/nowhere")
    assert code == 1
    assert (report["failed_phase"], report["error_category"]) == ("clone", "not_found")
    assert report["phases"]["clone"]["ok"] is False
    assert report["phases"]["cleanup"]["ok"] is True  # cleanup still ran
    assert len(daytona_standin.deleted) == 1 and not daytona_standin.sandboxes
