"""What tracing and analytics cost a turn: the same scripted turn with tracing off, with
MLflow tracing on, and with MLflow and PostHog on, all measured in one run.

Run from the repository root: ``.venv/bin/python -m bench.bench_tracing`` (``make bench``
runs it). It starts a private Ray, a real MLflow server and a PostHog stand-in on
127.0.0.1, and the real Serve app three times over (route prefixes ``/off``,
``/traced`` and ``/posthog``, each with its own settings and Ray namespace). Turns go
round-robin over the three, so drift on a shared machine hits each alike; the "off" app
is the baseline. It replaces the "Tracing and analytics" section of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.harness import App, ChatSocket, _wait_ready, bench_settings, running_app
from bench.report import MACHINE_NOTE, Table, ms, percentile, ratio, write_section
from fleet_rlm.config import Settings, apply_offline_env
from fleet_rlm.observability.mlflow_server import MlflowServer
from tests.standins.posthog_server import PosthogStandIn

COMMAND = ".venv/bin/python -m bench.bench_tracing"
SECTION = "# Tracing and analytics"
ROUNDS = 15  # turns per variant and kind
KINDS = {
    "quick turn (1 planning call)": "QUICK trace bench",
    "tool turn (8 planning calls, 7 tool calls)": "tool trace bench",
}
VARIANTS = ("off", "traced", "posthog")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _variant_settings(base: Settings, name: str, mlflow_uri: str, posthog_url: str) -> Settings:
    update: dict[str, object] = {"ray_namespace": f"{base.ray_namespace}_{name}"}
    if name in ("traced", "posthog"):
        update |= {"mlflow_enabled": True, "mlflow_tracking_uri": mlflow_uri}
    if name == "posthog":
        update |= {
            "posthog_enabled": True,
            "posthog_host": posthog_url,
            "posthog_api_key": "phc_bench",
        }
    return base.model_copy(update=update)


def _deploy(root: App, name: str, settings: Settings) -> App:
    from ray import serve

    from fleet_rlm.serve import FleetIngress

    serve.run(FleetIngress.bind(settings), name=f"bench-{name}", route_prefix=f"/{name}")
    app = App(f"{root.base_url}/{name}", settings)
    _wait_ready(app.base_url)
    return app


async def _measure(apps: dict[str, App]) -> dict[tuple[str, str], list[float]]:
    samples: dict[tuple[str, str], list[float]] = {}
    sockets = {}
    # One session per variant, its turns one after another: an actor per turn would be
    # a process per turn (about 200 MB each) on this small machine.
    sessions = {name: f"bench-{name}-{uuid.uuid4().hex[:6]}" for name in apps}
    for name, app in apps.items():
        sockets[name] = await ChatSocket.connect(app).__aenter__()
        await ChatSocket(sockets[name]).turn(sessions[name], "QUICK warm up")
    try:
        for round_index in range(ROUNDS):
            for kind, content in KINDS.items():
                for name in VARIANTS:
                    timing = await ChatSocket(sockets[name]).turn(sessions[name], content)
                    if timing.kind != "final":
                        raise RuntimeError(f"{name}: the turn ended {timing.kind}")
                    samples.setdefault((kind, name), []).append(timing.final_s)
            print(f"  round {round_index + 1}/{ROUNDS}", flush=True)
    finally:
        for ws in sockets.values():
            await ws.close()
    return samples


def _table(samples: dict[tuple[str, str], list[float]], events: int) -> Table:
    table = Table(
        "A turn with tracing off, MLflow tracing on, and MLflow + PostHog on",
        ["turn", "variant", "p50 (ms)", "p99 (ms)", "ratio to off, p50 / p99"],
    )
    for kind in KINDS:
        off = samples[(kind, "off")]
        for name in VARIANTS:
            values = samples[(kind, name)]
            table.add(
                kind,
                name,
                ms(percentile(values, 50)),
                ms(percentile(values, 99)),
                f"{ratio(percentile(values, 50), percentile(off, 50))} / "
                f"{ratio(percentile(values, 99), percentile(off, 99))}",
            )
    table.notes.append(
        f"{ROUNDS} turns per row, message sent to terminal event over the chat WebSocket;"
        " variants interleaved round-robin; the PostHog stand-in received"
        f" {events} events"
    )
    table.notes.append(
        "Where tracing's time goes (profiled in-process): MLflow 3.17's exporter sends each"
        " span as its own REST request when the span ends (about 14 for the quick turn,"
        " 10-15 ms each here), and a turn flushes them before its final event so that"
        " trace_url opens a whole trace. PostHog adds little: its events are queued and"
        " sent by the client's background thread."
    )
    return table


def main() -> None:
    apply_offline_env()
    started = time.monotonic()
    data = Path(tempfile.mkdtemp(prefix="fleet-bench-tracing-"))
    base = bench_settings(data, f"fleet_rlm_bench_tracing_{os.getpid()}", 600.0)
    base = base.model_copy(update={"agent_max_iters": 8})
    mlflow_uri = f"http://127.0.0.1:{_free_port()}"
    server = MlflowServer(Settings(mlflow_tracking_uri=mlflow_uri, data_dir=data / "mlflow"))
    print("==> starting MLflow and the PostHog stand-in", flush=True)
    server.start()
    try:
        with PosthogStandIn(api_key="phc_bench") as posthog, running_app(base) as root:
            print("==> deploying the three variants", flush=True)
            apps = {
                name: _deploy(root, name, _variant_settings(base, name, mlflow_uri, posthog.url))
                for name in VARIANTS
            }
            print(f"==> measuring {ROUNDS} rounds", flush=True)
            samples = asyncio.run(_measure(apps))
            time.sleep(2.0)  # the PostHog client sends in the background
            events = len(posthog.events())
    finally:
        server.stop()
    table = _table(samples, events)
    preamble = [
        f"Wall time {time.monotonic() - started:.0f} s; scripted LM (bench/rules.json);"
        " MLflow server local (SQLite, 1 worker), PostHog a stand-in capture server"
    ]
    print(f"{SECTION} ({MACHINE_NOTE})")
    print(table.markdown())
    path = write_section(SECTION, COMMAND, "bench/bench_tracing.py", [table], preamble)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
