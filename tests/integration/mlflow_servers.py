"""MLflow servers a fault test owns: the installed MLflow, or an older one, on a given port.

The older one is MLflow 3.10.1, installed by ``make test-deps`` beside the venv (it is
not importable from the venv itself) and run with that folder first on ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from fleet_rlm.config import Settings
from fleet_rlm.observability.mlflow_server import MlflowServer

OLD_VERSION = "3.10.1"
OLD_MLFLOW = Path(sys.prefix) / f"mlflow-{OLD_VERSION}"


def answers(uri: str) -> bool:
    try:
        return httpx.get(f"{uri}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until(check, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f} s")
        time.sleep(0.3)


class OldMlflowServer(MlflowServer):
    """``mlflow server`` of MLflow 3.10.1 over the same kind of store."""

    def start(self, timeout_s: float = 90.0) -> None:
        if not (OLD_MLFLOW / "mlflow").is_dir():
            raise FileNotFoundError(f"{OLD_MLFLOW} is missing; run `make test-deps`")
        old_path = os.environ.get("PYTHONPATH", "")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(OLD_MLFLOW), old_path) if p)
        try:
            super().start(timeout_s)
        finally:
            os.environ["PYTHONPATH"] = old_path


def kill_hard(server: MlflowServer) -> None:
    """SIGKILL the server's whole process group (it runs uvicorn as a child)."""
    assert server.process is not None
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()


def upgrade(settings: Settings) -> subprocess.CompletedProcess[str]:
    """What ``make mlflow-upgrade`` runs, with these settings in the environment."""
    env = {
        **os.environ,
        "DATA_DIR": str(settings.data_dir),
        "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
    }
    return subprocess.run(
        [sys.executable, "-m", "fleet_rlm.observability.mlflow_server", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
