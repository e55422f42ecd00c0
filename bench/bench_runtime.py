"""Runtime benchmarks: event fan-out latency, session start and wake, memory per session.

Run from the repository root: ``.venv/bin/python -m bench.bench_runtime`` (or
``python bench/bench_runtime.py``). It starts a private Ray and the real Serve app on
127.0.0.1 (``bench.harness``), measures, prints tables and overwrites
``bench/RESULTS.md``. The machine is small and shared, so every product figure stands
beside a baseline measured in the same run, and nothing asserts on time:

1. execution events, session actor to 1/10/50 viewers, vs an asyncio fan-out in-process;
2. a new session's and a passivated session's first turn, vs ping/pong and a warm turn;
3. resident memory of a session actor, vs a bare idle Ray actor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

# Ray reads these when imported: listeners on 127.0.0.1 (DESIGN.md), no usage stats.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for `python bench/...py`

import psutil
import ray

from bench.fanout import FanoutResult, append_times, asyncio_fanout, product_fanout
from bench.harness import App, ChatSocket, TurnTiming, actor_name, bench_settings, running_app
from bench.report import MACHINE_NOTE, Table, ms, percentile, ratio, write_results

VIEWER_COUNTS = (1, 10, 50)
TURNS_PER_COUNT = 12  # x 17 execution steps per turn (bench/rules.json) = 204 frames
BASELINE_SPACING_S = 0.005
PINGS = 20
WARM_TURNS = 10
LIFECYCLE_SAMPLES = 5
IDLE_ACTORS = 3
UNTOUCHED_SESSIONS = 2
ACTOR_WAIT_S = 60.0
IDLE_TIMEOUT_S = 2.0
PASSIVATE_WAIT_S = 90.0
RUN_TIMEOUT_S = 420.0
QUICK = "QUICK"  # the rules answer at once: one planning call, no tool
MB = 1024 * 1024


class Idle:
    """The bare actor. Defined in ``__main__``, so it travels to the worker by value and
    the worker imports nothing of the benchmark."""

    def pid(self) -> int:
        return os.getpid()


def _actor_pid(_actor: object) -> int:
    return os.getpid()


@dataclass(frozen=True)
class ProcMem:
    pid: int
    rss: int
    uss: int


@dataclass
class Results:
    startup_s: dict[str, float]
    ping_s: list[float] = field(default_factory=list)
    warm: list[TurnTiming] = field(default_factory=list)
    fanout: dict[int, FanoutResult] = field(default_factory=dict)
    baseline_s: dict[int, list[float]] = field(default_factory=dict)
    created: list[TurnTiming] = field(default_factory=list)
    passivated_after_s: list[float] = field(default_factory=list)
    woken: list[TurnTiming] = field(default_factory=list)
    session_mem: list[ProcMem] = field(default_factory=list)
    untouched_mem: list[ProcMem] = field(default_factory=list)
    idle_mem: list[ProcMem] = field(default_factory=list)


def _mem(pid: int) -> ProcMem:
    info = psutil.Process(pid).memory_full_info()
    return ProcMem(pid, info.rss, info.uss)


def _actor(app: App, session_id: str) -> ray.actor.ActorHandle | None:
    try:
        return ray.get_actor(actor_name(session_id), namespace=app.settings.ray_namespace)
    except ValueError:
        return None


async def _session_mem(app: App, session_id: str) -> ProcMem:
    """Memory of the session's actor process, waiting for the actor to be registered."""
    deadline = time.monotonic() + ACTOR_WAIT_S
    while (handle := _actor(app, session_id)) is None:
        if time.monotonic() > deadline:
            raise RuntimeError(f"session {session_id}: no actor after {ACTOR_WAIT_S} s")
        await asyncio.sleep(0.1)
    return _mem(await handle.__ray_call__.remote(_actor_pid))


async def measure(app: App) -> Results:
    results = Results(app.startup_s)
    async with ChatSocket.connect(app) as ws:
        chat = ChatSocket(ws)
        results.ping_s = [await chat.ping() for _ in range(PINGS)]
        session = f"fanout-{uuid.uuid4().hex[:8]}"
        await chat.turn(session, f"{QUICK} warm up")  # the cluster's first actor: not a sample
        results.warm = [await chat.turn(session, f"{QUICK} {i}") for i in range(WARM_TURNS)]
        for n in VIEWER_COUNTS:
            results.fanout[n] = await product_fanout(app, chat, session, n, TURNS_PER_COUNT)
        for n in VIEWER_COUNTS:
            items = max(results.fanout[n].frames, 200)
            results.baseline_s[n] = await asyncio_fanout(n, items, BASELINE_SPACING_S)
        sessions = await _create_and_weigh(app, results)
    await _passivate_and_wake(app, sessions, results)
    return results


async def _create_and_weigh(app: App, results: Results) -> list[str]:
    """New sessions, one finished turn each, and a few only watched (``resume``, no turn):
    their actors' memory while they are alive."""
    sessions = [f"fresh-{uuid.uuid4().hex[:8]}" for _ in range(LIFECYCLE_SAMPLES)]
    untouched = [f"untouched-{uuid.uuid4().hex[:8]}" for _ in range(UNTOUCHED_SESSIONS)]
    async with ChatSocket.connect(app) as ws:  # its subscriptions keep the actors alive
        keeper = ChatSocket(ws)
        for sid in sessions:
            results.created.append(await keeper.turn(sid, f"{QUICK} hello"))
        for sid in untouched:
            await keeper.resume(sid)
        results.session_mem = [await _session_mem(app, sid) for sid in sessions]
        results.untouched_mem = [await _session_mem(app, sid) for sid in untouched]
        idle_cls = ray.remote(num_cpus=0)(Idle)
        idles = [idle_cls.remote() for _ in range(IDLE_ACTORS)]
        try:
            results.idle_mem = [_mem(await a.pid.remote()) for a in idles]
        finally:
            for actor in idles:
                ray.kill(actor)
    return sessions


async def _passivate_and_wake(app: App, sessions: list[str], results: Results) -> None:
    """Wait for the idle actors to exit (nobody watches them now), then wake each."""
    closed = time.monotonic()
    pending = set(sessions)
    while pending and time.monotonic() - closed < PASSIVATE_WAIT_S:
        for sid in [s for s in pending if _actor(app, s) is None]:
            results.passivated_after_s.append(time.monotonic() - closed)
            pending.discard(sid)
        await asyncio.sleep(0.1)
    if pending:
        raise RuntimeError(
            f"{len(pending)} session actors did not passivate within {PASSIVATE_WAIT_S} s"
        )
    async with ChatSocket.connect(app) as ws:
        waker = ChatSocket(ws)
        for sid in sessions:
            results.woken.append(await waker.turn(sid, f"{QUICK} again"))


def fanout_table(r: Results) -> Table:
    table = Table(
        "Event latency: session actor to viewers (execution_step frames, append to receipt)",
        ["viewers", "frames", "samples", "p50 ms", "p99 ms", "asyncio p50 ms", "asyncio p99 ms"]
        + ["ratio p50", "ratio p99"],
    )
    for n, res in r.fanout.items():
        lat, base = res.latencies, r.baseline_s[n]
        p50, p99 = percentile(lat, 50), percentile(lat, 99)
        b50, b99 = percentile(base, 50), percentile(base, 99)
        table.add(n, res.frames, len(lat), ms(p50), ms(p99), ms(b50), ms(b99))
        table.rows[-1] += [ratio(p50, b50), ratio(p99, b99)]
        if res.fewest < res.frames:
            table.notes.append(f"{n} viewers: one viewer got only {res.fewest} of the frames")
        if res.errors:
            table.notes.append(f"{n} viewers: {len(res.errors)} error frames: {res.errors[0]}")
    table.notes += [
        "append = the event's created_at in the store, taken as the actor appends it (before"
        " the durable write); receipt = time.time() as the viewer's socket yields the frame",
        f"frames from {TURNS_PER_COUNT} measured 17-step turns per row, after one unmeasured"
        " turn; samples = frames x viewers",
        "asyncio = one producer, N asyncio.Queues, N consumer tasks, one process, items"
        f" {BASELINE_SPACING_S * 1000:.0f} ms apart; ratio = product / asyncio",
    ]
    return table


def breakdown_table(r: Results) -> Table:
    table = Table(
        "Where a frame's time goes (p50 / p99 ms)",
        ["viewers", "made -> appended", "appended -> received", "made -> received", "spread"]
        + ["slowest receipts"],
    )

    def both(values: list[float]) -> str:
        return f"{ms(percentile(values, 50))} / {ms(percentile(values, 99))}"

    for n, res in r.fanout.items():
        worst = ", ".join(
            f"{res.latency(w) * 1000:.0f} ms (step {w.step_id}, {w.step_type})"
            for w in res.worst(2)
        )
        spread = both(res.spread()) if n > 1 else "-"
        table.add(n, both(res.hops()), both(res.latencies), both(res.made_latencies), spread, worst)
    table.notes += [
        "made = step.timestamp, set in the turn's worker thread; made -> appended is the hop"
        " onto the actor's event loop",
        "spread = last viewer's receipt minus the first's, per frame (includes this client"
        " reading all N sockets on one event loop)",
    ]
    return table


def lifecycle_table(r: Results) -> Table:
    ping = percentile(r.ping_s, 50)
    warm = percentile([t.started_s for t in r.warm], 50)
    table = Table(
        "Session start and wake (chat socket, message to first frame)",
        ["measure", "samples", "p50 ms", "max ms", "vs ping p50", "vs warm message p50"],
    )

    def row(label: str, values: list[float]) -> None:
        p50 = percentile(values, 50)
        table.add(label, len(values), ms(p50), ms(max(values)), ratio(p50, ping), ratio(p50, warm))

    row("ping -> pong (baseline)", r.ping_s)
    row("warm session: message -> turn_started (baseline)", [t.started_s for t in r.warm])
    row("warm session: message -> final (1-step turn)", [t.final_s for t in r.warm])
    row("new session: message -> turn_started", [t.started_s for t in r.created])
    row("new session: message -> final", [t.final_s for t in r.created])
    row("new session: turn_started -> final", [t.final_s - t.started_s for t in r.created])
    row("passivated session: message -> turn_started", [t.started_s for t in r.woken])
    row("passivated session: message -> final", [t.final_s for t in r.woken])
    after = r.passivated_after_s
    table.notes.append(
        f"idle timeout {IDLE_TIMEOUT_S:.0f} s; actors exited {min(after):.1f} to"
        f" {max(after):.1f} s (p50 {percentile(after, 50):.1f} s) after their last socket closed"
    )
    return table


def memory_table(r: Results) -> Table:
    table = Table(
        "Resident memory per actor process",
        ["process", "count", "RSS MB each", "USS MB each", "RSS vs idle actor"],
    )
    idle_rss = sum(m.rss for m in r.idle_mem) / len(r.idle_mem)
    for label, mems in (
        ("bare idle Ray actor (baseline)", r.idle_mem),
        ("session actor, watched, no turn yet", r.untouched_mem),
        ("session actor, one finished turn", r.session_mem),
    ):
        rss = sum(m.rss for m in mems) / len(mems)
        uss = sum(m.uss for m in mems) / len(mems)
        table.add(label, len(mems), f"{rss / MB:.0f}", f"{uss / MB:.0f}", ratio(rss, idle_rss))
    total = sum(m.rss for m in r.session_mem) / MB
    table.notes.append(
        f"{len(r.session_mem)} session actors: {total:.0f} MB RSS in all (psutil, PIDs from"
        " the actors themselves); USS = memory no other process shares"
    )
    return table


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    namespace = f"fleet_rlm_bench_{os.getpid()}"
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        settings = bench_settings(Path(tmp), namespace, IDLE_TIMEOUT_S)
        with running_app(settings) as app:
            results = asyncio.run(asyncio.wait_for(measure(app), RUN_TIMEOUT_S))
        for res in results.fanout.values():  # Ray is down now; the store file is still here
            res.appended = append_times(settings, res.session_id)
    elapsed = time.monotonic() - started
    tables = [
        fanout_table(results),
        breakdown_table(results),
        lifecycle_table(results),
        memory_table(results),
    ]
    startup = ", ".join(f"{k} {v:.1f} s" for k, v in results.startup_s.items())
    preamble = [
        f"Startup: {startup}; whole run {elapsed:.0f} s",
        f"Scripted LM: {settings.dspy_lm_scripted_rules.name}, MLflow off, auth off",
    ]
    print(f"# fleet-rlm runtime benchmarks ({MACHINE_NOTE})")
    for line in preamble:
        print(f"- {line}")
    for table in tables:
        print()
        print(table.markdown())
    print(f"\nwritten to {write_results(tables, preamble)}")


if __name__ == "__main__":
    main()
