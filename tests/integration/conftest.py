"""A real Ray cluster, a real MLflow server and the real Serve app, once per test run.

The app runs with ``AUTH_REQUIRED=true`` so that every test also exercises auth; the
``client`` fixture mints tokens. The language model is the scripted LM replaying
``rules.json`` (see docs/scripted-lm.md), so the agent's path is known. PostHog
analytics are on, sent to the stand-in capture server ``posthog_standin``.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleet_rlm.config import Settings, apply_offline_env
from tests.integration.wsclient import Client
from tests.standins.posthog_server import PosthogStandIn

HERE = Path(__file__).parent
SECRET = "integration-secret-" + "x" * 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from fleet_rlm.observability.mlflow_server import MlflowServer

    port = _free_port()
    data = tmp_path_factory.mktemp("mlflow")
    settings = Settings(mlflow_tracking_uri=f"http://127.0.0.1:{port}", data_dir=data)
    server = MlflowServer(settings)
    server.start()
    yield settings.mlflow_tracking_uri
    server.stop()


@pytest.fixture(scope="session")
def posthog_standin() -> Iterator[PosthogStandIn]:
    """The PostHog capture stand-in every turn of the run reports to (tests/standins)."""
    with PosthogStandIn() as server:
        yield server


@pytest.fixture(scope="session")
def settings(
    tmp_path_factory: pytest.TempPathFactory, mlflow_uri: str, posthog_standin: PosthogStandIn
) -> Settings:
    data = tmp_path_factory.mktemp("data")
    return Settings(
        app_env="local",
        auth_required=True,
        auth_jwt_secret=SECRET,
        data_dir=data,
        dspy_lm_scripted_rules=HERE / "rules.json",
        mlflow_tracking_uri=mlflow_uri,
        mlflow_auto_start=False,
        session_idle_timeout_s=4.0,
        cancel_grace_s=1.0,
        viewer_queue_frames=200,
        delegate_threshold_chars=0,  # the scripted planner chooses; one test turns it on
        posthog_enabled=True,
        posthog_host=posthog_standin.url,
        posthog_api_key=posthog_standin.api_key,
    )


@pytest.fixture(scope="session")
def base_url(settings: Settings) -> Iterator[str]:
    apply_offline_env()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray
    from ray import serve

    from fleet_rlm.serve import APP_NAME, FleetIngress

    port = _free_port()
    ray.init(
        namespace=settings.ray_namespace,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        runtime_env={"env_vars": {"PYTHONPATH": str(HERE.parent.parent)}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(FleetIngress.bind(settings), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        pytest.fail("the Serve app did not become ready within 120 s")
    yield url
    serve.shutdown()
    ray.shutdown()


@pytest.fixture
def client(base_url: str, settings: Settings) -> Client:
    return Client(base_url, settings, user_id="alice")


@pytest.fixture
def other_client(base_url: str, settings: Settings) -> Client:
    return Client(base_url, settings, user_id="mallory")
