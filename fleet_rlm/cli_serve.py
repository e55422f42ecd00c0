"""``fleet-rlm serve``: bring up everything the runtime needs on this machine, then wait.

It starts a local Ray unless ``RAY_ADDRESS`` names one, and the Serve app, whose first
replica starts MLflow in the background (``APP_ENV=local``, see ``diagnostics_actor``).
It prints one line with the URL once ``/ready`` answers, and on SIGINT or SIGTERM stops,
in reverse order, exactly what it started.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

import httpx

from fleet_rlm.config import Settings

logger = logging.getLogger("fleet_rlm.serve")

READY_TIMEOUT_S = 180.0


def _wait_ready(url: str, stop: threading.Event) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and not stop.is_set():
        try:
            if httpx.get(f"{url}/ready", timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        stop.wait(0.5)
    return False


def serve_forever(host: str, port: int, replicas: int = 1) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if host in ("127.0.0.1", "localhost"):
        # Keep Ray's own listeners on loopback too (DESIGN.md, measured facts).
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    settings = Settings()
    settings.check_safe()
    stop = threading.Event()

    import ray
    from ray import serve

    started_ray = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    logger.info("starting %s Ray", "a local" if started_ray else "a connection to")
    ray.init(
        # "local": a new Ray of our own, never a cluster found on this machine by accident
        address=os.environ.get("RAY_ADDRESS") or "local",
        namespace=settings.ray_namespace,
        include_dashboard=False,
        **({"_node_ip_address": "127.0.0.1"} if started_ray else {}),
    )
    # After ray.init, which installs a SIGTERM handler of its own that crashes the driver.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        from fleet_rlm.serve import APP_NAME, FleetIngress

        serve.start(http_options={"host": host, "port": port})
        serve.run(
            FleetIngress.options(num_replicas=replicas).bind(settings),
            name=APP_NAME,
            route_prefix="/",
            blocking=False,
        )
        url = f"http://{host}:{port}"
        if not _wait_ready(url, stop):
            logger.error("the app did not become ready; see the log above")
            return 1
        print(f"fleet-rlm ready at {url}", flush=True)
        stop.wait()
        logger.info("stopping")
        return 0
    finally:
        try:
            serve.shutdown()
        finally:
            if started_ray:
                from fleet_rlm.observability.diagnostics_actor import stop_diagnostics

                stop_diagnostics(settings.ray_namespace)  # the MLflow server it started
                ray.shutdown()
