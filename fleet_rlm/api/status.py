"""``/ready`` and ``/api/v1/runtime/status``: what is healthy, and what to do when not."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from fleet_rlm.agent.lm import describe_models
from fleet_rlm.api.runtime import Runtime
from fleet_rlm.errors import StoreError
from fleet_rlm.observability.diagnostics_actor import ask
from fleet_rlm.observability.mlflow_runtime import mlflow_status


def _database_state(rt: Runtime) -> tuple[str, str | None]:
    try:
        rt.store.ping()
    except StoreError as exc:
        return ("degraded" if rt.settings.database_required else "missing"), exc.message
    return "ready", None


def _planner_state(rt: Runtime) -> str:
    s = rt.settings
    # With nothing configured the embedded model serves, so a planner is always there.
    return (
        "ready"
        if (s.scripted or s.dspy_lm_model or s.dspy_lm_api_base or s.embedded_model)
        else "missing"
    )


@functools.cache
def sandbox_isolation(provider: str) -> dict[str, Any]:
    """What confinement sandboxes get on this host (probed once per process)."""
    if provider == "daytona":
        return {"provider": "daytona", "network": "provider-managed", "isolated": True}
    from fleet_rlm.sandbox.limits import probe_isolation

    facts = probe_isolation()
    return {**facts.describe(), "isolated": facts.own_network}


async def readiness(
    rt: Runtime, database_state: tuple[str, str | None] | None = None
) -> dict[str, Any]:
    database, _ = database_state or await asyncio.to_thread(_database_state, rt)
    planner = _planner_state(rt)
    db_ok = database == "ready" or not rt.settings.database_required
    return {
        "ready": planner == "ready" and db_ok,
        "planner_configured": planner == "ready",
        "planner": planner,
        "database": database,
        "database_required": rt.settings.database_required,
        "sandbox_provider": rt.settings.sandbox_provider,
        # false: local sandboxes share the host's network (the server is not root on Linux)
        "sandbox_network_isolated": sandbox_isolation(rt.settings.sandbox_provider)["isolated"],
    }


async def cached_probes(rt: Runtime) -> dict[str, Any]:
    """The last result of each probe (shared through the diagnostics actor), or None."""
    shared = await ask(rt.diagnostics, "probes")
    results = shared if shared is not None else rt.local_probes
    return {"lm": results.get("lm"), "daytona": results.get("daytona")}


def _probe_guidance(tests: dict[str, Any]) -> list[str]:
    hints = {
        "lm": "check DSPY_LM_MODEL, DSPY_LM_API_BASE and DSPY_LM_API_KEY and that the model"
        " server answers, then POST /api/v1/runtime/tests/lm again",
        "daytona": "check DAYTONA_API_KEY, DAYTONA_API_URL and DAYTONA_TARGET, or run"
        " `fleet-rlm daytona-smoke` for each phase, then POST /api/v1/runtime/tests/daytona",
    }
    return [
        f"{kind} probe failed at {result['checked_at']}: {result['error']}; {hints[kind]}"
        for kind, result in tests.items()
        if result is not None and not result["ok"]
    ]


async def runtime_status(rt: Runtime) -> dict[str, Any]:
    s = rt.settings
    database_state = await asyncio.to_thread(_database_state, rt)  # one ping for both
    ready = await readiness(rt, database_state)
    _, db_error = database_state
    startup = await ask(rt.diagnostics, "mlflow_state")
    mlflow = await asyncio.to_thread(mlflow_status, s, startup)
    tests = await cached_probes(rt)
    guidance: list[str] = []
    if db_error:
        guidance.append(f"database: {db_error}")
    if mlflow["startup_status"] == "degraded":
        guidance.append(f"mlflow: {mlflow['startup_error']}")
    if mlflow["startup_status"] == "pending":
        guidance.append(
            "mlflow: the local MLflow server is starting (about 10 s); turns run untraced"
            " until it answers"
        )
    guidance.extend(_probe_guidance(tests))
    if not (s.dspy_lm_model or s.dspy_lm_api_base or s.scripted):
        guidance.append(
            "llm: using the embedded SmolLM2-135M model, which is fast but weak; set"
            " DSPY_LM_MODEL (and DSPY_LM_API_BASE / DSPY_LM_API_KEY) for real answers"
        )
    sandbox = sandbox_isolation(s.sandbox_provider)
    if not sandbox["isolated"]:
        guidance.append(
            "sandbox: local sandboxes are not in their own network namespace (run the server as"
            " root on Linux, or use SANDBOX_PROVIDER=daytona); their code can reach the network"
        )
    if s.sandbox_provider == "daytona" and not s.daytona_api_key:
        guidance.append("daytona: set DAYTONA_API_KEY, DAYTONA_API_URL and DAYTONA_TARGET")
    return {
        "app_env": s.app_env,
        "write_enabled": ready["database"] == "ready",
        "ready": ready["ready"],
        "sandbox_provider": s.sandbox_provider,
        "active_models": describe_models(s),
        "llm": {
            "model_set": bool(s.dspy_lm_model),
            "api_key_set": bool(s.dspy_lm_api_key),
            "planner_configured": ready["planner_configured"],
        },
        "mlflow": mlflow,
        "daytona": {
            "api_key_set": bool(s.daytona_api_key),
            "api_url_set": bool(s.daytona_api_url),
            "target_set": bool(s.daytona_target),
        },
        "sandbox": sandbox,
        "tests": tests,
        "guidance": guidance,
    }
