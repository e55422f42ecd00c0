"""``POST /api/v1/runtime/tests/lm`` and ``/tests/daytona``: run a probe, cache it, answer it.

The result is recorded in the runtime's diagnostics actor, so every replica's
``/api/v1/runtime/status`` shows it under ``tests``; without Ray (unit tests) it is kept
in this replica's ``Runtime``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from fleet_rlm.api.http_routes import caller, runtime_of
from fleet_rlm.api.pagination import InvalidRequestError
from fleet_rlm.config import Settings
from fleet_rlm.errors import UnsupportedIdentityFieldsError
from fleet_rlm.identity import IDENTITY_FIELDS
from fleet_rlm.observability.diagnostics_actor import ask
from fleet_rlm.observability.probes import probe_daytona, probe_lm

Probe = Callable[[Settings, float], Awaitable[dict[str, Any]]]


async def _no_body(request: Request) -> None:
    """Probes take no body; one that tries to set an identity is refused, as everywhere."""
    body = await request.body()
    if not body.strip():
        return
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequestError("a probe takes no body; send none (or {})") from None
    if not isinstance(raw, dict):
        raise InvalidRequestError("a probe takes no body; send none (or {})")
    if IDENTITY_FIELDS & raw.keys():
        raise UnsupportedIdentityFieldsError(
            "workspace_id and user_id come from authentication; remove them from the body"
        )


async def _run(request: Request, probe: Probe) -> JSONResponse:
    caller(request)
    await _no_body(request)
    rt = runtime_of(request)
    result = await probe(rt.settings, rt.settings.runtime_probe_timeout_s)
    rt.local_probes[result["kind"]] = result
    await ask(rt.diagnostics, "record_probe", result)
    return JSONResponse(result)


async def test_lm(request: Request) -> JSONResponse:
    return await _run(request, probe_lm)


async def test_daytona(request: Request) -> JSONResponse:
    return await _run(request, probe_daytona)
