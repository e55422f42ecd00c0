"""Sandbox and child-task benchmarks: what the pool actor and a Ray task add to small work.

Run from the repository root: ``.venv/bin/python -m bench.bench_sandbox``. It starts a private
Ray on 127.0.0.1 (no Serve app), measures, prints tables and writes the "Sandboxes and child
tasks" section of ``bench/RESULTS.md`` (replacing that section only). Every product figure stands
beside a baseline measured in the same run, and nothing asserts on time:

1. an execute of trivial code through the ``SandboxPool`` actor (the streaming call
   ``PoolInterpreter`` makes), with and without one tool request answered by the caller, vs
   ``LocalSandbox.execute`` on a sandbox made in this process, and vs a no-op call to the actor;
2. a ``num_cpus=0`` Ray task that builds a one-predictor DSPy program on the scripted LM and runs
   it, vs the same function in this process, and vs a Ray task that does nothing.

A local provider kills whatever runs under a sandbox uid it takes, and the pool's provider and the
one made here take the same uids, so the two are measured one after the other, never together;
the run refuses to start while another server's sandboxes hold those uids.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Ray reads these when imported: listeners on 127.0.0.1 (DESIGN.md), no usage stats.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `python bench/...py`

import psutil
import ray

from bench.report import MACHINE_NOTE, Table, ms, percentile, ratio, write_section
from fleet_rlm.config import Settings, apply_offline_env
from fleet_rlm.sandbox.limits import SANDBOX_UIDS, SandboxLimits, probe_isolation
from fleet_rlm.sandbox.local import LocalProvider
from fleet_rlm.sandbox.pool import SandboxPoolRemote
from fleet_rlm.sandbox.protocol import SandboxSpec

COMMAND = ".venv/bin/python -m bench.bench_sandbox"
SECTION = "# Sandboxes and child tasks"
EXECUTES = 500
CHILD_RUNS = 100
WARMUP = 10
CODE = "total = sum(range(10))"
TOOL_CODE = "total = lookup(3)"
EXEC_TIMEOUT_S = 10.0
RULES = {"rules": [{"name": "add", "when": {"contains": "2 + 2"}, "outputs": {"answer": "4"}}]}

Samples = dict[str, list[float]]


def tiny_program(rules_path: str) -> str:
    """A one-predictor DSPy program on the scripted LM, built and run: a child's smallest work."""
    import dspy

    from fleet_rlm.agent.scripted_lm import scripted_lm

    with dspy.context(lm=scripted_lm(rules_path), adapter=dspy.JSONAdapter()):
        return str(dspy.Predict("question -> answer")(question="What is 2 + 2?").answer)


# Defined in ``__main__``, so they travel to the worker by value.
tiny_program_task = ray.remote(num_cpus=0)(tiny_program)


def noop() -> None:
    return None


noop_task = ray.remote(num_cpus=0)(noop)


def _timed(samples: list[float], call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    value = call()
    samples.append(time.perf_counter() - started)
    return value


async def _answer(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    return args[0] * 2


def measure_direct(base: Path) -> Samples:
    """``LocalSandbox.execute`` on a sandbox made in this process."""

    async def run() -> Samples:
        box = await LocalProvider(SandboxLimits(), base).create(SandboxSpec())
        samples: Samples = {"plain": [], "tool": []}
        try:
            for key, code, tools in (("plain", CODE, []), ("tool", TOOL_CODE, ["lookup"])):
                for i in range(WARMUP + EXECUTES):
                    started = time.perf_counter()
                    result = await box.execute(code, {}, tools, None, _answer, EXEC_TIMEOUT_S)
                    if i >= WARMUP:
                        samples[key].append(time.perf_counter() - started)
                    assert result.kind == "result", result
        finally:
            await box.close()
        return samples

    return asyncio.run(run())


def _pool_execute(actor: Any, lease_id: str, code: str, tools: list[str]) -> dict[str, Any]:
    stream = actor.execute.options(num_returns="streaming").remote(
        lease_id, code, {}, tools, None, EXEC_TIMEOUT_S
    )
    for ref in stream:
        message = ray.get(ref)
        if message["type"] == "tool_request":
            value = message["args"][0] * 2
            ray.get(actor.reply.remote(lease_id, message["id"], value, None))
        elif message["type"] == "done":
            return message["result"]
    raise RuntimeError("the pool's execute stream ended without a result")


def measure_pool(base: Path, namespace: str) -> Samples:
    """The same executes through a ``SandboxPool`` actor, plus a no-op call to that actor."""
    settings = Settings(
        sandbox_dir=base,
        sandbox_max_total=1,
        sandbox_warm_min=0,
        rlm_max_depth=1,
        mlflow_enabled=False,
    )
    actor = SandboxPoolRemote.options(
        name=f"bench_sandbox_pool_{uuid.uuid4().hex[:8]}",
        namespace=namespace,
        num_cpus=0,
        max_concurrency=1000,
    ).remote(settings)
    samples: Samples = {"call": [], "plain": [], "tool": []}
    try:
        lease = ray.get(actor.lease.remote("bench", 1))
        assert lease["ok"], lease
        lease_id = lease["lease_id"]
        calls: dict[str, Callable[[], Any]] = {
            "call": lambda: ray.get(actor.reply.remote("no-such-lease", 0)),
            "plain": lambda: _pool_execute(actor, lease_id, CODE, []),
            "tool": lambda: _pool_execute(actor, lease_id, TOOL_CODE, ["lookup"]),
        }
        for key, call in calls.items():
            for _ in range(WARMUP):
                call()
            for _ in range(EXECUTES):
                value = _timed(samples[key], call)
                assert key == "call" or value["kind"] == "result", value
        ray.get(actor.release.remote(lease_id))
    finally:
        ray.get(actor.close_all.remote())
        ray.kill(actor)
    return samples


def measure_children(rules: str) -> tuple[Samples, float]:
    """The tiny program in this process and as a Ray task; the first task's time apart."""
    samples: Samples = {"local": [], "noop": [], "task": []}
    started = time.perf_counter()
    assert ray.get(tiny_program_task.remote(rules)) == "4"
    cold = time.perf_counter() - started
    calls: dict[str, Callable[[], Any]] = {
        "local": lambda: tiny_program(rules),
        "noop": lambda: ray.get(noop_task.remote()),
        "task": lambda: ray.get(tiny_program_task.remote(rules)),
    }
    for key, call in calls.items():
        for _ in range(5):
            call()
        for _ in range(CHILD_RUNS):
            value = _timed(samples[key], call)
            assert key == "noop" or value == "4", value
    return samples, cold


def _row(table: Table, label: str, values: list[float], baseline: list[float]) -> None:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    b50, b99 = percentile(baseline, 50), percentile(baseline, 99)
    table.add(label, len(values), ms(p50), ms(p99), ratio(p50, b50), ratio(p99, b99))


def execute_table(direct: Samples, pool: Samples) -> Table:
    table = Table(
        "Sandbox execute round trip (trivial code, one warm sandbox)",
        ["path", "runs", "p50 ms", "p99 ms", "vs direct p50", "vs direct p99"],
    )
    base = direct["plain"]
    _row(table, "LocalSandbox.execute in-process (baseline)", base, base)
    _row(table, "  the same, with one tool call", direct["tool"], base)
    _row(table, "no-op call to the pool actor (Ray baseline)", pool["call"], base)
    _row(table, "pool actor: streaming execute", pool["plain"], base)
    _row(table, "pool actor: streaming execute, one tool request", pool["tool"], base)
    extra = percentile(pool["plain"], 50) - percentile(base, 50)
    table.notes += [
        f"code: `{CODE}`; with a tool: `{TOOL_CODE}`, answered by the caller (in-process: an"
        " async callback; through the pool: a tool_request item on the stream, then"
        " `pool.reply`, as PoolInterpreter does)",
        f"{WARMUP} unmeasured runs first; the pool adds {extra * 1000:.2f} ms at p50 to an execute",
    ]
    return table


def child_table(children: Samples, cold: float) -> Table:
    table = Table(
        "Small child work as a Ray task (num_cpus=0) vs in-process",
        ["path", "runs", "p50 ms", "p99 ms", "vs in-process p50", "vs in-process p99"],
    )
    base = children["local"]
    _row(table, "tiny DSPy program in-process (baseline)", base, base)
    _row(table, "Ray task doing nothing", children["noop"], base)
    _row(table, "tiny DSPy program as a Ray task", children["task"], base)
    table.notes += [
        "tiny program: scripted_lm(rules) + dspy.JSONAdapter + dspy.Predict('question -> answer'),"
        " built and called once per run (one scripted LM call)",
        f"5 unmeasured runs first; the very first task (worker start, imports) took"
        f" {cold * 1000:.0f} ms",
    ]
    return table


def foreign_sandbox_processes() -> list[psutil.Process]:
    """Processes holding sandbox uids now: another server's sandboxes, which a provider kills."""
    found = []
    for process in psutil.process_iter(["uids", "status"]):
        uids = process.info["uids"]
        if uids is not None and uids.real in SANDBOX_UIDS:
            if process.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def main() -> None:
    if others := foreign_sandbox_processes():
        raise SystemExit(
            f"{len(others)} processes hold sandbox uids ({SANDBOX_UIDS.start}-"
            f"{SANDBOX_UIDS.stop - 1}): another server's sandboxes, which this run would kill;"
            " run it when they are gone"
        )
    apply_offline_env()
    namespace = f"fleet_rlm_bench_sandbox_{os.getpid()}"
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="fleet-bench-sandbox-"))
    try:
        rules = base / "tiny-rules.json"
        rules.write_text(json.dumps(RULES), encoding="utf-8")
        rules.chmod(0o644)
        ray.init(
            namespace=namespace,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            log_to_driver=False,
        )
        ray_up = time.monotonic() - started
        try:
            pool = measure_pool(base, namespace)
            direct = measure_direct(base)
            children, cold = measure_children(str(rules))
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(base, ignore_errors=True)
    elapsed = time.monotonic() - started
    isolation = probe_isolation().describe()
    tables = [execute_table(direct, pool), child_table(children, cold)]
    preamble = [
        f"ray.init {ray_up:.1f} s; whole run {elapsed:.0f} s",
        f"Local sandbox: user {isolation['user']}, network {isolation['network']}",
    ]
    print(f"{SECTION} ({MACHINE_NOTE})")
    for line in preamble:
        print(f"- {line}")
    for table in tables:
        print()
        print(table.markdown())
    path = write_section(SECTION, COMMAND, "bench/bench_sandbox.py", tables, preamble)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
