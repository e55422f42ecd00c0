"""A local MLflow tracking server, started by the runtime in ``APP_ENV=local``.

``MlflowServer`` runs ``mlflow server`` as a child process on 127.0.0.1 with a SQLite
backend under the data folder, one worker and job execution off (ready in about 7 s at
0.5 GB instead of 20 s at 2.8 GB). The child is told to die with its parent, and it
stops its own uvicorn worker on SIGTERM; only a SIGKILL of the ``mlflow server`` process
itself leaves that worker behind (docs/limits.md). The runtime starts it through
``diagnostics_actor``; ``make mlflow-server`` runs it in the foreground (``main``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from urllib.parse import urlparse

from fleet_rlm.config import Settings
from fleet_rlm.observability.mlflow_runtime import client_version, mlflow_answers, probe_mlflow

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 90.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it when the parent goes away (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    os.setsid()


class MlflowServer:
    def __init__(self, settings: Settings) -> None:
        parsed = urlparse(settings.mlflow_tracking_uri)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 5001
        self.uri = settings.mlflow_tracking_uri
        self.data_dir = settings.data_dir.resolve()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir / "mlflow-server.log"

    def command(self) -> list[str]:
        store = self.data_dir / "mlflow.sqlite3"
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{store}",
            "--artifacts-destination",
            str(self.data_dir / "mlflow-artifacts"),
        ]

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        log_path = self.log_path
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        logger.info("starting MLflow server on %s:%d (log: %s)", self.host, self.port, log_path)
        started = time.monotonic()
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the MLflow server exited with {self.process.returncode}; see {log_path}"
                )
            if mlflow_answers(self.uri, timeout_s=1.0):
                logger.info("MLflow server ready in %.1f s", time.monotonic() - started)
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the MLflow server did not answer within {timeout_s:.0f} s")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        logger.info("MLflow server stopped")


def upgrade_store(settings: Settings) -> int:
    """``make mlflow-upgrade``: bring the local store's schema up to this MLflow's."""
    server = MlflowServer(settings)
    store = server.data_dir / "mlflow.sqlite3"
    if not store.is_file():
        print(f"no local MLflow store at {store}: nothing to upgrade")
        return 0
    if mlflow_answers(settings.mlflow_tracking_uri):
        print(
            f"an MLflow server answers at {settings.mlflow_tracking_uri}; stop it first"
            " (the upgrade rewrites the store it may be using), then run this again",
            file=sys.stderr,
        )
        return 1
    print(f"upgrading {store} to MLflow {client_version()}'s schema", flush=True)
    command = [sys.executable, "-m", "mlflow", "db", "upgrade", f"sqlite:///{store}"]
    done = subprocess.run(command, check=False)
    if done.returncode == 0:
        print("upgraded; start the server with `make mlflow-server`")
    return done.returncode


def serve_foreground(settings: Settings) -> int:
    """``make mlflow-server``: run the local tracking server in the foreground until Ctrl-C."""
    probe = probe_mlflow(settings.mlflow_tracking_uri)
    if probe.answers and probe.older_than_client():
        print(
            f"an older MLflow server ({probe.version}) answers at {settings.mlflow_tracking_uri};"
            f" stop it, run `make mlflow-upgrade`, then run this again",
            file=sys.stderr,
        )
        return 1
    if probe.answers:
        print(f"an MLflow server already answers at {settings.mlflow_tracking_uri}")
        return 0
    server = MlflowServer(settings)
    server.start()
    print(f"MLflow UI at {settings.mlflow_tracking_uri} (Ctrl-C stops it)", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()
    return 0


def main(argv: list[str]) -> int:
    """``python -m fleet_rlm.observability.mlflow_server [serve | upgrade]``."""
    from fleet_rlm.config import apply_offline_env

    apply_offline_env()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    command = argv[0] if argv else "serve"
    if command not in ("serve", "upgrade"):
        print(f"unknown command {command!r}; use serve or upgrade", file=sys.stderr)
        return 2
    settings = Settings()
    return upgrade_store(settings) if command == "upgrade" else serve_foreground(settings)


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    sys.exit(main(sys.argv[1:]))
