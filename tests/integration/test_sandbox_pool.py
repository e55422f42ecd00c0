"""The ``SandboxPool`` actor on real Ray with local sandboxes: leases, the streaming execute and its
tool requests, the bound, replacement of a broken sandbox, cancellation, counts, and cleanup.

Each test gets its own pool actor (a unique name in a unique namespace) over its own base
directory, so nothing here leases from the product's ``sandbox_pool`` or another test's pool. Ray
is started here, on 127.0.0.1, unless the session already runs it (the Serve app of
``conftest.py``); then it is reused and left running. Like the hostile tests, the module refuses to
run while another server's sandboxes hold sandbox uids on this host (a new provider kills them).
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when Ray starts

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray

from fleet_rlm.config import Settings, apply_offline_env
from fleet_rlm.sandbox.limits import SANDBOX_UIDS
from fleet_rlm.sandbox.pool import SandboxPoolRemote
from tests.integration.test_sandbox_hostile import foreign_sandbox_processes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="local sandboxes are confined only as root"),
]

NAMESPACE = f"fleet_rlm_pool_test_{os.getpid()}"
LEASE_TIMEOUT_S = 2.0
Answer = Callable[[dict[str, Any]], tuple[Any, str | None]]


@pytest.fixture(scope="module", autouse=True)
def ray_cluster() -> Iterator[None]:
    if others := foreign_sandbox_processes():
        pytest.skip(f"{len(others)} processes of another server hold sandbox uids on this host")
    apply_offline_env()
    started = not ray.is_initialized()
    if started:
        ray.init(
            namespace=NAMESPACE,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
    yield
    if started:
        ray.shutdown()


class Pool:
    """One pool actor and its base directory, with the calls the tests make."""

    def __init__(self, base: Path, **settings: Any) -> None:
        self.base = base
        self.settings = Settings(
            **{
                "sandbox_dir": base,
                "sandbox_max_total": 2,
                "sandbox_warm_min": 0,
                "sandbox_lease_timeout_s": LEASE_TIMEOUT_S,
                "sandbox_exec_timeout_s": 30,
                "rlm_max_depth": 2,
                "mlflow_enabled": False,
                **settings,
            }
        )
        # Set by a test that stops a running execute: the counts then drift (see
        # test_counts_add_up_when_a_running_execute_is_stopped), which teardown must not hide.
        self.counts_drift = False
        self.actor = SandboxPoolRemote.options(
            name=f"sandbox_pool_{uuid.uuid4().hex[:8]}",
            namespace=NAMESPACE,
            num_cpus=0,
            max_concurrency=1000,
        ).remote(self.settings)

    def lease(self, owner: str, depth: int = 2) -> dict[str, Any]:
        return ray.get(self.actor.lease.remote(owner, depth))

    def lease_id(self, owner: str, depth: int = 2) -> str:
        answer = self.lease(owner, depth)
        assert answer["ok"], answer
        return answer["lease_id"]

    def release(self, lease_id: str) -> dict[str, Any]:
        return ray.get(self.actor.release.remote(lease_id))

    def stats(self) -> dict[str, Any]:
        return ray.get(self.actor.stats.remote())

    def start(self, lease_id: str, code: str, tools: list[str], timeout_s: float) -> Any:
        return self.actor.execute.options(num_returns="streaming").remote(
            lease_id, code, {}, tools, None, timeout_s
        )

    def finish(
        self, stream: Any, lease_id: str, answer: Answer | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Read a started execute to its end, answering each tool request with ``answer``."""
        requests = []
        for ref in stream:
            message = ray.get(ref, timeout=60)
            if message["type"] == "done":
                return message["result"], requests
            assert message["type"] == "tool_request", message
            requests.append(message)
            if answer is not None:
                value, error = answer(message)
                assert ray.get(self.actor.reply.remote(lease_id, message["id"], value, error))
        raise AssertionError("the execute stream ended without a done message")

    def execute(
        self,
        lease_id: str,
        code: str,
        tools: list[str] | None = None,
        answer: Answer | None = None,
        timeout_s: float = 20.0,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        stream = self.start(lease_id, code, tools or [], timeout_s)
        return self.finish(stream, lease_id, answer)

    def dirs(self) -> list[Path]:
        return sorted(self.base.glob("sbx-*"))

    def processes(self) -> list[psutil.Process]:
        """This pool's sandbox processes: a sandbox uid, working in (a maybe deleted) sbx-* here."""
        found = []
        for process in psutil.process_iter(["uids", "cwd"]):
            uids, cwd = process.info["uids"], process.info["cwd"] or ""
            if uids is not None and uids.real in SANDBOX_UIDS and cwd.startswith(f"{self.base}/"):
                found.append(process)
        return found


def assert_counts_add_up(stats: dict[str, Any]) -> None:
    """Every sandbox made is closed, idle, or held by a lease."""
    held = stats["total"] - stats["idle"] - stats["creating"]
    assert stats["created"] - stats["closed"] == stats["idle"] + held, stats
    assert held <= stats["leased"] and stats["total"] <= stats["max_total"], stats


def close_and_check(pool: Pool) -> None:
    """``close_all`` leaves no sandbox: no process, no directory, every count back to zero."""
    try:
        assert ray.get(pool.actor.close_all.remote()) == {"ok": True}
        stats = pool.stats()
        assert (stats["idle"], stats["leased"], stats["total"]) == (0, 0, 0), stats
        if not pool.counts_drift:
            assert_counts_add_up(stats)
        assert pool.dirs() == []
        deadline = time.monotonic() + 5
        while pool.processes() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pool.processes() == []
    finally:
        ray.kill(pool.actor)
        shutil.rmtree(pool.base, ignore_errors=True)


@pytest.fixture
def make_pool() -> Iterator[Callable[..., Pool]]:
    made: list[Pool] = []

    def make(**settings: Any) -> Pool:
        # Under the system temp folder: sandbox uids must traverse every ancestor of their dir.
        base = Path(tempfile.mkdtemp(prefix="fleet-pool-test-"))
        try:
            made.append(Pool(base, **settings))
        except BaseException:
            shutil.rmtree(base)
            raise
        return made[-1]

    yield make
    for pool in made:
        close_and_check(pool)


@pytest.fixture
def pool(make_pool: Callable[..., Pool]) -> Pool:
    return make_pool()


def test_lease_execute_release_answers_tool_requests_from_the_caller(pool: Pool) -> None:
    lease_id = pool.lease_id("turn-1:child-1")

    def answer(request: dict[str, Any]) -> tuple[Any, str | None]:
        if request["args"] == ["boom"]:
            return None, "ValueError: no such page"
        return {"query": request["args"][0], "limit": request["kwargs"]["limit"]}, None

    code = """\
found = lookup("cats", limit=2)
print(found["query"], found["limit"])
try:
    lookup("boom")
except RuntimeError as exc:
    print("error:", exc)
"""
    result, requests = pool.execute(lease_id, code, ["lookup"], answer)
    assert result["kind"] == "result", result
    # The pool wraps the caller's error in a RuntimeError, which the sandbox names again.
    assert (
        result["stdout"] == "cats 2\nerror: lookup failed: RuntimeError: ValueError: no such page\n"
    )
    assert [(r["name"], r["args"], r["kwargs"]) for r in requests] == [
        ("lookup", ["cats"], {"limit": 2}),
        ("lookup", ["boom"], {}),
    ]
    again, _ = pool.execute(lease_id, "found")
    assert again["stdout"] == "{'query': 'cats', 'limit': 2}\n"  # state lives on in the lease
    final, _ = pool.execute(lease_id, "SUBMIT(answer=found['query'])")
    assert (final["kind"], final["value"]) == ("final", {"answer": "cats"})
    assert len(pool.processes()) == 1 and len(pool.dirs()) == 1

    assert pool.release(lease_id) == {"ok": True}
    assert pool.release(lease_id)["code"] == "unknown_lease"
    stats = pool.stats()
    # Closed on release, never handed to the next owner with this one's state.
    assert (stats["idle"], stats["leased"], stats["created"], stats["leases"]) == (0, 0, 1, 1)
    assert pool.processes() == [] and pool.dirs() == []
    assert_counts_add_up(stats)
    ended, _ = pool.execute(lease_id, "print(1)")
    assert ended["kind"] == "crashed" and "lease has ended" in ended["error"]


def test_bound_makes_a_third_lease_wait_then_serves_it_on_release(pool: Pool) -> None:
    first, second = pool.lease("run-a"), pool.lease("run-b")
    assert first["ok"] and second["ok"]

    started = time.monotonic()
    refused = pool.lease("run-c")
    waited = time.monotonic() - started
    assert refused["code"] == "sandbox_pool_exhausted", refused
    assert "SANDBOX_MAX_TOTAL" in refused["message"]
    assert LEASE_TIMEOUT_S - 0.1 <= waited < LEASE_TIMEOUT_S + 5
    stats = pool.stats()
    assert (stats["total"], stats["high_water"], stats["leased"]) == (2, 2, 2)
    assert len(pool.processes()) == 2

    waiting = pool.actor.lease.remote("run-c", 2)
    time.sleep(0.5)
    assert pool.release(first["lease_id"]) == {"ok": True}
    served = ray.get(waiting, timeout=LEASE_TIMEOUT_S + 5)
    assert served["ok"], served
    assert served["sandbox_id"] != first["sandbox_id"]  # a fresh one: no state crosses leases
    assert pool.stats()["created"] == 3
    assert_counts_add_up(pool.stats())
    for lease in (second, served):
        pool.release(lease["lease_id"])


def test_shallow_runs_leave_a_sandbox_for_the_deepest(pool: Pool) -> None:
    shallow = pool.lease("run-a", depth=1)
    assert shallow["ok"]
    assert pool.lease("run-b", depth=1)["code"] == "sandbox_pool_exhausted"
    deep = pool.lease("run-a:sub", depth=2)
    assert deep["ok"], deep
    for lease in (shallow, deep):
        pool.release(lease["lease_id"])


def test_concurrent_shallow_leases_leave_a_sandbox_for_the_deepest(pool: Pool) -> None:
    answers = ray.get([pool.actor.lease.remote(f"run-{i}", 1) for i in range(2)])
    try:
        assert sorted(a["ok"] for a in answers) == [False, True], answers
    finally:
        for answer in answers:
            if answer["ok"]:
                pool.release(answer["lease_id"])


def test_broken_sandbox_is_replaced_and_the_next_execute_says_state_was_reset(
    pool: Pool,
) -> None:
    lease_id = pool.lease_id("run-a")
    pool.execute(lease_id, "kept = 41")
    before = {p.pid for p in pool.processes()}

    stuck, _ = pool.execute(lease_id, "while True:\n    pass", timeout_s=1.5)
    assert (stuck["kind"], stuck["broken"]) == ("limit", True), stuck
    assert "timed out after 1.5 s" in stuck["error"]
    stats = pool.stats()
    assert (stats["replaced"], stats["closed"], stats["leased"]) == (1, 1, 1)
    assert_counts_add_up(stats)
    assert pool.processes() == [] and pool.dirs() == []

    fresh, _ = pool.execute(lease_id, "print('alive')")
    assert (fresh["kind"], fresh["stdout"]) == ("result", "alive\n"), fresh
    assert "the sandbox was replaced; variables from earlier steps are gone" in fresh["error"]
    assert {p.pid for p in pool.processes()}.isdisjoint(before)
    lost, _ = pool.execute(lease_id, "kept + 1")
    assert lost["kind"] == "execution_error" and "NameError" in lost["error"], lost
    assert "replaced" not in lost["error"]  # said once, on the first execute after
    assert_counts_add_up(pool.stats())
    pool.release(lease_id)


def test_cancel_owner_stops_only_that_owners_sandboxes(make_pool: Callable[..., Pool]) -> None:
    pool = make_pool(sandbox_max_total=3)
    pool.counts_drift = True
    sleeping = pool.lease_id("turn-1:child-1")
    asking = pool.lease_id("turn-1:child-2")
    other = pool.lease_id("turn-2:child-1")
    slow = pool.start(sleeping, "import time\ntime.sleep(60)", [], 90)
    unanswered = pool.start(asking, "lookup('never answered')", ["lookup"], 90)
    assert ray.get(next(unanswered))["type"] == "tool_request"
    time.sleep(0.3)

    started = time.monotonic()
    assert ray.get(pool.actor.cancel_owner.remote("turn-1:")) == {"ok": True, "stopped": 2}
    killed, _ = pool.finish(slow, sleeping)
    assert killed["kind"] == "crashed" and "SIGKILL" in killed["error"], killed
    dropped, _ = pool.finish(unanswered, asking)
    assert dropped["kind"] == "crashed", dropped
    assert time.monotonic() - started < 10

    assert pool.release(sleeping)["code"] == "unknown_lease"
    after, _ = pool.execute(asking, "print(1)")
    assert after["kind"] == "crashed" and "lease has ended" in after["error"]
    survivor, _ = pool.execute(other, "print('still here')")
    assert survivor["stdout"] == "still here\n"
    assert (pool.stats()["leased"], pool.stats()["total"]) == (1, 1)
    assert len(pool.processes()) == 1 and len(pool.dirs()) == 1
    pool.release(other)


def test_counts_add_up_through_leases_breaks_and_releases(pool: Pool) -> None:
    a, b = pool.lease_id("run-a"), pool.lease_id("run-b")
    assert_counts_add_up(pool.stats())
    pool.execute(a, "import os\nos._exit(1)")  # dies; the pool closes it
    assert_counts_add_up(pool.stats())
    pool.release(b)  # closed: a released sandbox is never reused by another owner
    assert_counts_add_up(pool.stats())
    pool.execute(a, "print(1)")  # replaced: a fresh one
    stats = pool.stats()
    assert_counts_add_up(stats)
    assert (stats["created"], stats["closed"], stats["replaced"], stats["idle"]) == (3, 2, 1, 0)
    pool.release(a)
    stats = pool.stats()
    assert_counts_add_up(stats)
    assert (stats["idle"], stats["leased"]) == (0, 0)
    assert len(pool.processes()) == len(pool.dirs()) == 0


def test_close_all_leaves_no_process_or_directory(pool: Pool) -> None:
    pool.counts_drift = True
    held = pool.lease_id("run-a")
    pool.release(pool.lease_id("run-b"))
    pool.execute(held, "open('notes.txt', 'w').write('x')")
    running = pool.start(held, "import time\ntime.sleep(60)", [], 90)
    time.sleep(0.3)
    assert len(pool.processes()) == len(pool.dirs()) == 1  # run-b's closed on release

    assert ray.get(pool.actor.close_all.remote()) == {"ok": True}
    done, _ = pool.finish(running, held)
    assert done["kind"] == "crashed", done
    assert pool.dirs() == []
    deadline = time.monotonic() + 5
    while pool.processes() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pool.processes() == []
    stats = pool.stats()
    assert (stats["created"], stats["total"], stats["idle"], stats["leased"]) == (2, 0, 0, 0)


@pytest.mark.xfail(
    strict=True,
    reason="SandboxPool._drop_lease sets lease.sandbox = None only after awaiting _close; the"
    " running execute sees its sandbox die meanwhile, takes it for broken and closes it again:"
    " 'closed' and 'replaced' count one sandbox twice (created - closed goes negative)",
)
def test_counts_add_up_when_a_running_execute_is_stopped(pool: Pool) -> None:
    pool.counts_drift = True
    lease_id = pool.lease_id("turn-9:child-1")
    running = pool.start(lease_id, "import time\ntime.sleep(60)", [], 90)
    time.sleep(0.3)
    assert ray.get(pool.actor.cancel_owner.remote("turn-9:"))["stopped"] == 1
    pool.finish(running, lease_id)
    stats = pool.stats()
    assert (stats["created"], stats["closed"], stats["replaced"]) == (1, 1, 0), stats


@pytest.mark.xfail(
    strict=True,
    reason="SandboxPool.release returns a healthy sandbox to the idle list as it is, and the next"
    " lease (any owner) gets the previous run's variables and files",
)
def test_a_released_sandbox_keeps_nothing_for_the_next_owner(pool: Pool) -> None:
    alice = pool.lease("session-alice:run-1")
    pool.execute(alice["lease_id"], "token = 'alice-secret'\nopen('notes.txt', 'w').write('x')")
    pool.release(alice["lease_id"])
    mallory = pool.lease("session-mallory:run-1")
    try:
        assert mallory["sandbox_id"] == alice["sandbox_id"]  # reused, as designed
        seen, _ = pool.execute(
            mallory["lease_id"], "import os\nprint(globals().get('token'), os.listdir('.'))"
        )
        assert seen["stdout"] == "None []\n", seen
    finally:
        pool.release(mallory["lease_id"])
