"""The real embedded model (llama.cpp + SmolLM2-135M) behind ``build_planner_lm``, no Ray.

The 135M model is weak: these tests assert that the pipeline is real (a schema-constrained
answer parses; a ReAct run ends cleanly, with an answer or a ``ModelError``), not quality.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import dspy
import psutil
import pytest

from fleet_rlm.agent import local_model
from fleet_rlm.agent.lm import build_adapter, build_planner_lm, classify_model_error, lm_guard
from fleet_rlm.agent.local_model import LocalModelServer, ensure_local_model
from fleet_rlm.config import Settings, apply_offline_env
from fleet_rlm.errors import ModelError, TurnCancelled

apply_offline_env()

REACT_MAX_ITERS = 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ray_initialized() -> bool:
    import sys

    ray = sys.modules.get("ray")
    return ray is not None and bool(ray.is_initialized())


@pytest.fixture(scope="module")
def embedded(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings whose planner is the embedded model, served in this process."""
    for name in ("DSPY_LM_MODEL", "DSPY_LM_SCRIPTED_RULES", "DSPY_LM_API_BASE"):
        monkeypatch_module.delenv(name, raising=False)
    settings = Settings(
        local_model_port=_free_port(),
        local_model_ctx=8192,
        local_model_max_tokens=256,
        lm_timeout_s=60.0,
    )
    server: LocalModelServer | None = None
    if _ray_initialized():
        # Another test started Ray in this process; ensure_local_model would use the actor.
        server = LocalModelServer(settings.local_model_port, settings.local_model_ctx)
        server.start()
        server.wait_ready()
    else:
        ensure_local_model(settings)  # the in-process path
    yield settings
    if server is not None:
        server.stop()
    local_model.stop_in_process_model()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_server_listens_on_loopback_only(embedded: Settings) -> None:
    port = embedded.local_model_port
    assert local_model.answers(port)
    assert ensure_local_model(embedded) == f"http://127.0.0.1:{port}/v1"  # reused, not restarted
    listening = [
        conn.laddr
        for conn in psutil.Process().net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port
    ]
    assert listening and all(address.ip == "127.0.0.1" for address in listening)


def test_predict_returns_a_parsed_answer(embedded: Settings) -> None:
    lm = build_planner_lm(embedded)
    with dspy.context(lm=lm, adapter=build_adapter(embedded)):
        result = dspy.Predict("question -> answer")(question="What is the capital of France?")

    assert isinstance(result.answer, str) and result.answer.strip()
    sent = lm.history[-1]["kwargs"]["response_format"]
    assert sent is not None  # a schema went to llama.cpp: decoding was constrained


def test_react_with_a_tool_ends_cleanly(embedded: Settings) -> None:
    calls: list[str] = []

    def lookup_capital(country: str) -> str:
        """Return the capital city of a country."""
        calls.append(country)
        return "Paris" if "france" in country.lower() else "unknown"

    lm = build_planner_lm(embedded)
    agent = dspy.ReAct("question -> answer", tools=[lookup_capital], max_iters=REACT_MAX_ITERS)
    started = time.monotonic()
    try:
        with dspy.context(lm=lm, adapter=build_adapter(embedded)):
            result = agent(question="What is the capital of France? Use lookup_capital.")
    except Exception as exc:  # the weak model may produce something unusable
        error = classify_model_error(exc)
        assert isinstance(error, ModelError)
        assert error.code in {"model_output_unparseable", "model_timeout", "model_unavailable"}
    else:
        assert isinstance(result.answer, str)
    # Each iteration is one request, plus the extract step; each bounded by max_tokens.
    assert len(lm.history) <= REACT_MAX_ITERS + 1
    assert time.monotonic() - started < 120


def test_guard_stops_the_embedded_model(embedded: Settings) -> None:
    lm = build_planner_lm(embedded)
    cancel = TurnCancelled("cancelled")

    def check() -> None:
        raise cancel

    with lm_guard(check), dspy.context(lm=lm, adapter=build_adapter(embedded)):
        with pytest.raises(TurnCancelled) as info:
            dspy.Predict("question -> answer")(question="?")
    assert info.value is cancel
    assert lm.history == []


_ACTOR_SCRIPT = """
import json, sys, time
import ray
from fleet_rlm.config import Settings, apply_offline_env
from fleet_rlm.agent.local_model import ACTOR_NAME, answers, ensure_local_model

apply_offline_env()
port, namespace = int(sys.argv[1]), sys.argv[2]
ray.init(address="local", namespace=namespace, include_dashboard=False,
         _node_ip_address="127.0.0.1", runtime_env={"env_vars": {"PYTHONPATH": sys.argv[3]}})
settings = Settings(local_model_port=port, ray_namespace=namespace)
result = {"driver": ensure_local_model(settings)}

@ray.remote
def from_worker(port, namespace):
    import dspy
    from fleet_rlm.agent.lm import build_adapter, build_planner_lm
    from fleet_rlm.config import Settings
    settings = Settings(local_model_port=port, ray_namespace=namespace)
    with dspy.context(lm=build_planner_lm(settings), adapter=build_adapter(settings)):
        return dspy.Predict("question -> answer")(question="Capital of France?").answer

result["worker_answer"] = ray.get(from_worker.remote(port, namespace))
actor = ray.get_actor(ACTOR_NAME, namespace=namespace)
ray.kill(actor)
deadline = time.monotonic() + 10
while answers(port) and time.monotonic() < deadline:
    time.sleep(0.1)
result["answers_after_kill"] = answers(port)
ray.shutdown()
print("RESULT " + json.dumps(result))
"""


@pytest.mark.integration
def test_ray_actor_path_from_driver_and_worker(tmp_path) -> None:
    """With Ray initialised, ensure_local_model gets-or-creates the detached named actor."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    for name in ("DSPY_LM_MODEL", "DSPY_LM_SCRIPTED_RULES", "DSPY_LM_API_BASE", "RAY_ADDRESS"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", _ACTOR_SCRIPT, str(port), "fleet_rlm_local_model_test", str(root)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    import json

    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert result["driver"] == f"http://127.0.0.1:{port}/v1", result
    assert isinstance(result["worker_answer"], str), result
    assert result["answers_after_kill"] is False, result
