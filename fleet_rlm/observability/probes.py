"""The runtime probes: a real round trip to the planner LM, and a Daytona sandbox lifecycle.

Each returns PROTOCOL.md's probe result, ``{"kind", "ok", "latency_ms", "checked_at",
"preflight", "error"}``, and never hangs: the work runs in a worker thread and the probe
answers ``ok: false`` when its timeout passes (the LM call is also given that timeout,
so the thread does not linger long after). ``preflight`` says what was configured
before anything was contacted; ``error`` says what went wrong and what to do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

import dspy

from fleet_rlm.config import Settings
from fleet_rlm.runtime.frames import iso_now, redact, truncate

logger = logging.getLogger(__name__)

ProbeKind = Literal["lm", "daytona"]
ERROR_LIMIT = 500


class ProbeFailed(Exception):
    def __init__(self, message: str, detail: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or {}


class ProbeSignature(dspy.Signature):
    """fleet-rlm runtime probe: reply with the single word ok."""

    question: str = dspy.InputField()
    answer: str = dspy.OutputField()


def lm_preflight(settings: Settings) -> dict[str, Any]:
    from fleet_rlm.agent.lm import describe_models

    models = describe_models(settings)
    return {
        "source": models["source"],
        "model": models["planner"],
        "api_base": models["api_base"],
        "api_key_set": bool(settings.dspy_lm_api_key),
    }


def _lm_round_trip(settings: Settings) -> dict[str, Any]:
    from fleet_rlm.agent.lm import build_adapter, build_planner_lm, classify_model_error

    try:
        lm = build_planner_lm(settings)
        with dspy.context(lm=lm, adapter=build_adapter(settings), callbacks=[]):
            answer = dspy.Predict(ProbeSignature)(question="Are you there?").answer
    except Exception as exc:
        raise ProbeFailed(classify_model_error(exc).message) from exc
    return {"answer": truncate(str(answer), 200)}


def daytona_preflight(settings: Settings) -> dict[str, Any]:
    return {
        "provider_selected": settings.sandbox_provider == "daytona",
        "api_key_set": bool(settings.daytona_api_key),
        "api_url_set": bool(settings.daytona_api_url),
        "target_set": bool(settings.daytona_target),
    }


async def _daytona_lifecycle(settings: Settings, timeout_s: float) -> dict[str, Any]:
    from fleet_rlm.sandbox.smoke import run_smoke

    if not (settings.daytona_api_key and settings.daytona_api_url):
        raise ProbeFailed("set DAYTONA_API_KEY and DAYTONA_API_URL (and DAYTONA_TARGET)")
    report = await run_smoke(settings, None, timeout_s=timeout_s)
    if not report["ok"]:
        raise ProbeFailed(
            f"{report['failed_phase']} failed ({report['error_category']}): {report['error']}",
            detail={"phases": report["phases"]},
        )
    return {"phases": report["phases"]}


async def _timed(
    kind: ProbeKind,
    preflight: dict[str, Any],
    work: Callable[[], Awaitable[dict[str, Any]]],
    timeout_s: float,
) -> dict[str, Any]:
    started = time.monotonic()
    error: str | None = None
    try:
        detail = await asyncio.wait_for(work(), timeout_s)
    except TimeoutError:
        detail = {}
        error = f"no answer within {timeout_s:g} s; check that the endpoint is up and reachable"
    except ProbeFailed as exc:
        detail, error = exc.detail, str(exc)
    except Exception as exc:  # a probe reports; it never raises into the route
        logger.exception("%s probe failed unexpectedly", kind)
        detail, error = {}, f"{type(exc).__name__}: {exc}"
    result = {
        "kind": kind,
        "ok": error is None,
        "latency_ms": int((time.monotonic() - started) * 1000),
        "checked_at": iso_now(),
        "preflight": {**preflight, **redact(detail)},  # preflight holds flags, never values
        "error": None if error is None else redact(truncate(error, ERROR_LIMIT)),
    }
    logger.info("%s probe: ok=%s in %d ms", kind, result["ok"], result["latency_ms"])
    return result


async def probe_lm(settings: Settings, timeout_s: float) -> dict[str, Any]:
    # The LM call itself is bounded too, so its thread ends soon after a timeout.
    bounded = settings.model_copy(update={"lm_timeout_s": min(settings.lm_timeout_s, timeout_s)})
    return await _timed(
        "lm",
        lm_preflight(settings),
        lambda: asyncio.to_thread(_lm_round_trip, bounded),
        timeout_s,
    )


async def probe_daytona(settings: Settings, timeout_s: float) -> dict[str, Any]:
    return await _timed(
        "daytona",
        daytona_preflight(settings),
        lambda: _daytona_lifecycle(settings, timeout_s),
        timeout_s,
    )
