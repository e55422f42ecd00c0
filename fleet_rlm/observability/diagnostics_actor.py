"""``RuntimeDiagnostics``: the one Ray actor holding what every replica's status shows.

It owns two cluster-wide things: the local MLflow server, which it starts and watches,
and the last result of each runtime probe (``POST /api/v1/runtime/tests/*``), so that
every replica's ``/api/v1/runtime/status`` shows the same ``tests``.

In ``APP_ENV=local`` with ``MLFLOW_AUTO_START`` (the defaults) the first ingress replica
creates it by name; every replica asks it how the start-up goes, which is how
``/api/v1/runtime/status`` can say ``pending`` while the server boots in the background
(about 7 s) and the runtime already takes turns, untraced until it answers.

The server is started from a thread that then waits on it for the actor's life: the
child dies with the thread that started it (``PR_SET_PDEATHSIG``), so the thread must
outlive the start-up, and its wait notices a server that exits. States: ``starting``,
``running``, ``external`` (something else already answered), ``off`` (this environment
does not start one), ``failed`` and ``exited`` (with ``error`` saying what to do).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import ray

from fleet_rlm.config import Settings, apply_offline_env
from fleet_rlm.observability.mlflow_runtime import mlflow_answers
from fleet_rlm.observability.mlflow_server import MlflowServer

logger = logging.getLogger(__name__)

ACTOR_NAME = "runtime_diagnostics"
STATE_TIMEOUT_S = 2.0


def starts_local_server(settings: Settings) -> bool:
    return settings.mlflow_enabled and settings.mlflow_auto_start and settings.app_env == "local"


@ray.remote(num_cpus=0, max_restarts=0, max_concurrency=4)
class RuntimeDiagnostics:
    def __init__(self, settings: Settings) -> None:
        apply_offline_env()
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self._settings = settings
        self._lock = threading.Lock()
        self._server: MlflowServer | None = None
        self._stopping = False
        self._error: str | None = None
        self._state = "starting" if starts_local_server(settings) else "off"
        self._probes: dict[str, dict[str, Any]] = {}
        if self._state == "starting":
            threading.Thread(target=self._run, name="mlflow-server", daemon=True).start()

    def record_probe(self, result: dict[str, Any]) -> None:
        self._probes[result["kind"]] = result

    def probes(self) -> dict[str, dict[str, Any]]:
        return dict(self._probes)

    def mlflow_state(self) -> dict[str, Any]:
        with self._lock:
            return {"state": self._state, "error": self._error}

    def _set(self, state: str, error: str | None = None) -> None:
        with self._lock:
            self._state, self._error = state, error

    def _run(self) -> None:
        uri = self._settings.mlflow_tracking_uri
        if mlflow_answers(uri):
            logger.info("MLflow already answers at %s; not starting one", uri)
            self._set("external")
            return
        server = MlflowServer(self._settings)
        self._server = server
        try:
            server.start()
        except RuntimeError as exc:
            self._set("failed", f"the MLflow server did not start: {exc}; run `make mlflow-server`")
            return
        self._set("running")
        code = server.process.wait() if server.process else 0
        if not self._stopping:
            logger.warning("the MLflow server exited with %s", code)
            self._set(
                "exited",
                f"the MLflow server this runtime started exited with {code} (see"
                f" {server.log_path}); restart the runtime or run `make mlflow-server`",
            )

    def stop_mlflow(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.stop()
        self._set("off")


def start_diagnostics(settings: Settings) -> Any:
    """Get or create the actor (any replica may call this; one is made)."""
    return RuntimeDiagnostics.options(
        name=ACTOR_NAME,
        namespace=settings.ray_namespace,
        lifetime="detached",
        get_if_exists=True,
    ).remote(settings)


async def ask(handle: Any, method: str, *args: Any) -> Any:
    """Call the actor; None when there is none or it does not answer in time."""
    if handle is None:
        return None
    try:
        return await asyncio.wait_for(getattr(handle, method).remote(*args), STATE_TIMEOUT_S)
    except (TimeoutError, ray.exceptions.RayError) as exc:
        logger.warning("the runtime diagnostics actor did not answer %s: %s", method, exc)
        return None


def stop_diagnostics(namespace: str, timeout_s: float = 20.0) -> None:
    """Stop the MLflow server it started, then the actor (``fleet-rlm serve``'s exit)."""
    try:
        handle = ray.get_actor(ACTOR_NAME, namespace=namespace)
    except ValueError:
        return
    try:
        ray.get(handle.stop_mlflow.remote(), timeout=timeout_s)
    except ray.exceptions.RayError as exc:
        logger.warning("stopping the runtime diagnostics actor failed: %s", exc)
    ray.kill(handle)
