"""``GET /api/v1/sessions/{session_id}/traces`` and ``POST /api/v1/traces/feedback``.

The HTTP half only: who calls, which session, which page, whether the feedback body is
well-formed. Reading traces and logging assessments is ``observability.trace_search``.
A copy of each feedback also goes to the store, for optimization runs that outlive
MLflow's data.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from fleet_rlm.api.http_routes import NotFoundError, caller, runtime_of, session_key
from fleet_rlm.api.pagination import DEFAULT_LIMIT, MAX_LIMIT, InvalidRequestError
from fleet_rlm.errors import FleetError, StoreError, UnsupportedIdentityFieldsError
from fleet_rlm.identity import IDENTITY_FIELDS, Principal
from fleet_rlm.observability.trace_search import (
    Feedback,
    FeedbackLogged,
    call_mlflow,
    list_session_traces,
    log_feedback,
)

logger = logging.getLogger(__name__)

PAGE_TOKEN_MAX = 1024
BODY_MAX_BYTES = 1024 * 1024
COMMENT_MAX = 10_000
EXPECTED_RESPONSE_MAX = 100_000
TRACE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # MLflow's "tr-<hex>"; no path characters
FEEDBACK_FIELDS = frozenset({"trace_id", "value", "comment", "expected_response"})
FEEDBACK_SHAPE = '{"trace_id": str, "value": bool, "comment"?: str, "expected_response"?: str}'


class RequestTooLargeError(FleetError):
    code = "request_too_large"
    status = 413


async def list_traces(request: Request) -> JSONResponse:
    key = session_key(request)
    rt = runtime_of(request)
    limit, page_token = _page(request)
    if rt.store.get_session(key) is None:
        raise NotFoundError(f"no session {key.session_id!r} of yours")

    found = await call_mlflow(
        rt.settings,
        f"list the traces of session {key.session_id}",
        list_session_traces,
        key,
        limit,
        page_token,
    )
    items = [asdict(item) for item in found.items]
    return JSONResponse({"items": items, "next_page_token": found.next_page_token})


async def post_feedback(request: Request) -> JSONResponse:
    who = caller(request)
    rt = runtime_of(request)
    feedback = _feedback_request(await _read_body(request))

    logged = await call_mlflow(
        rt.settings, f"log feedback on trace {feedback.trace_id}", log_feedback, who, feedback
    )
    _keep_copy(request, who, feedback, logged)
    return JSONResponse(
        {
            "ok": True,
            "trace_id": logged.trace_id,
            "feedback_logged": True,
            "expectation_logged": logged.expectation_logged,
        }
    )


def _page(request: Request) -> tuple[int, str | None]:
    raw = request.query_params.get("limit", str(DEFAULT_LIMIT))
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3) or not 1 <= int(raw) <= MAX_LIMIT:
        raise InvalidRequestError(f"limit must be an integer 1 to {MAX_LIMIT}; got {raw!r}")
    token = request.query_params.get("page_token") or None
    if token is not None and (len(token) > PAGE_TOKEN_MAX or not token.isprintable()):
        raise InvalidRequestError(
            "page_token is not one this server issued; start again without it"
        )
    return int(raw), token


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    too_large = RequestTooLargeError(
        f"the feedback body is over {BODY_MAX_BYTES} bytes; shorten the comment or the"
        " expected response"
    )
    if declared and declared.isdigit() and int(declared) > BODY_MAX_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > BODY_MAX_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _feedback_request(body: bytes) -> Feedback:
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequestError(f"the body must be JSON: {FEEDBACK_SHAPE}") from None
    if not isinstance(raw, dict):
        raise InvalidRequestError(f"the body must be a JSON object: {FEEDBACK_SHAPE}")
    if IDENTITY_FIELDS & raw.keys():
        raise UnsupportedIdentityFieldsError(
            "workspace_id and user_id come from authentication; remove them from the body"
        )
    unknown = raw.keys() - FEEDBACK_FIELDS
    if unknown:
        raise InvalidRequestError(f"feedback does not take {sorted(unknown)}: {FEEDBACK_SHAPE}")

    trace_id, value = raw.get("trace_id"), raw.get("value")
    if not isinstance(trace_id, str) or not TRACE_ID.fullmatch(trace_id):
        raise InvalidRequestError(
            "'trace_id' must be a trace id such as 'tr-<32 hex digits>' (1 to 128 letters,"
            " digits, '-' or '_'), as a turn's final event gives it"
        )
    if not isinstance(value, bool):
        raise InvalidRequestError("'value' must be true (thumbs up) or false (thumbs down)")
    return Feedback(
        trace_id=trace_id,
        value=value,
        comment=_optional_text(raw, "comment", COMMENT_MAX),
        expected_response=_optional_text(raw, "expected_response", EXPECTED_RESPONSE_MAX),
    )


def _optional_text(raw: dict[str, Any], name: str, limit: int) -> str | None:
    """A text field that may be absent or null; blank counts as absent."""
    value = raw.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidRequestError(f"'{name}' must be a string of at most {limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"'{name}' must be valid Unicode (no lone surrogates)") from None
    return value if value.strip() else None


def _keep_copy(
    request: Request, who: Principal, feedback: Feedback, logged: FeedbackLogged
) -> None:
    """Record the feedback in the store too; MLflow has it already, so a failure only warns."""
    try:
        runtime_of(request).store.add_feedback(
            workspace_id=who.workspace_id,
            user_id=who.user_id,
            trace_id=logged.trace_id,
            value=feedback.value,
            session_id=logged.session_id,
            comment=feedback.comment,
            expected_response=feedback.expected_response,
        )
    except StoreError as exc:
        logger.warning(
            "session %s: feedback on trace %s is in MLflow but not in the store: %s",
            logged.session_id,
            logged.trace_id,
            exc.message,
        )
