"""HTTP routes: health, readiness, runtime status, sessions and their documents."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from fleet_rlm import __version__
from fleet_rlm.api.auth import authenticate
from fleet_rlm.api.pagination import InvalidRequestError, page, page_params
from fleet_rlm.api.runtime import Runtime
from fleet_rlm.api.status import readiness, runtime_status
from fleet_rlm.errors import FleetError, NotFoundError, UnsupportedIdentityFieldsError
from fleet_rlm.identity import IDENTITY_FIELDS, Principal, SessionKey

DOCUMENT_NAME_MAX = 200


class DocumentTooLargeError(FleetError):
    code = "document_too_large"
    status = 413


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def caller(request: Request) -> Principal:
    if IDENTITY_FIELDS & request.query_params.keys():
        raise UnsupportedIdentityFieldsError(
            "workspace_id and user_id come from authentication; remove them from the query"
        )
    return authenticate(request, runtime_of(request).settings)


def session_key(request: Request) -> SessionKey:
    return caller(request).session(request.path_params["session_id"])


def _json_value(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _record(obj: Any, *fields: str) -> dict[str, Any]:
    data = asdict(obj)
    return {f: _json_value(data[f]) for f in fields}


SESSION_FIELDS = ("session_id", "created_at", "updated_at", "turn_count", "last_seq")
TURN_FIELDS = (
    "turn_index",
    "status",
    "content",
    "answer",
    "error_code",
    "trace_id",
    "started_at",
    "ended_at",
)


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "version": __version__})


async def ready(request: Request) -> JSONResponse:
    body = await readiness(runtime_of(request))
    return JSONResponse(body, status_code=200 if body["ready"] else 503)


async def status(request: Request) -> JSONResponse:
    caller(request)
    return JSONResponse(await runtime_status(runtime_of(request)))


async def list_sessions(request: Request) -> JSONResponse:
    who = caller(request)
    limit, after_id = page_params(request)
    rows = runtime_of(request).store.list_sessions(
        who.workspace_id, who.user_id, limit + 1, after_id
    )
    items = [_record(r, *SESSION_FIELDS) for r in rows]
    return JSONResponse(page(items, [r.id for r in rows], limit))


async def get_session(request: Request) -> JSONResponse:
    key = session_key(request)
    store = runtime_of(request).store
    record = store.get_session(key)
    if record is None:
        raise NotFoundError(f"no session {key.session_id!r} of yours")
    body = _record(record, *SESSION_FIELDS)
    body["turns"] = [_record(t, *TURN_FIELDS) for t in store.list_turns(key)]
    return JSONResponse(body)


async def delete_session(request: Request) -> Response:
    key = session_key(request)
    rt = runtime_of(request)
    if rt.store.get_session(key) is None:
        raise NotFoundError(f"no session {key.session_id!r} of yours")
    await rt.actors.kill(key)  # a running turn ends with `cancelled` first
    rt.hub.end_session(
        key, FleetError(f"session {key.session_id} was deleted", code="session_deleted")
    )
    rt.store.delete_session(key)
    return Response(status_code=204)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise DocumentTooLargeError(f"the document is over {limit} bytes; split it or trim it")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise DocumentTooLargeError(f"the document is over {limit} bytes; split it or trim it")
        chunks.append(chunk)
    return b"".join(chunks)


def _document_request(body: bytes) -> tuple[str, str]:
    try:
        raw = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InvalidRequestError('the body must be JSON: {"name": ..., "text": ...}') from None
    if not isinstance(raw, dict):
        raise InvalidRequestError('the body must be a JSON object: {"name": ..., "text": ...}')
    if IDENTITY_FIELDS & raw.keys():
        raise UnsupportedIdentityFieldsError(
            "workspace_id and user_id come from authentication; remove them from the body"
        )
    name, text = raw.get("name"), raw.get("text")
    if not isinstance(name, str) or not 1 <= len(name) <= DOCUMENT_NAME_MAX or "/" in name:
        raise InvalidRequestError(
            f"'name' must be 1 to {DOCUMENT_NAME_MAX} characters without slashes"
        )
    if "\\" in name or name.strip() != name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidRequestError(
            "'name' may not contain backslashes, control characters or surrounding spaces"
        )
    if name in (".", ".."):
        raise InvalidRequestError("'name' may not be '.' or '..'")
    if not isinstance(text, str):
        raise InvalidRequestError("'text' must be a string")
    try:
        name.encode("utf-8"), text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(
            "'name' and 'text' must be valid Unicode (no lone surrogates)"
        ) from None
    return name, text


async def put_document(request: Request) -> JSONResponse:
    key = session_key(request)
    rt = runtime_of(request)
    limit = rt.settings.document_max_bytes
    # JSON may spend up to 6 bytes on one byte of text (\u00e9, \"): the limit is the text's.
    body = await _read_body(request, 6 * limit + 64 * 1024)
    name, text = _document_request(body)
    if len(text.encode()) > limit:
        raise DocumentTooLargeError(f"the document is over {limit} bytes; split it or trim it")
    record = rt.store.put_document(key, name, text)
    return JSONResponse(
        {"document_id": record.document_id, "name": record.name, "chars": record.chars},
        status_code=201,
    )


async def list_documents(request: Request) -> JSONResponse:
    key = session_key(request)
    limit, after_id = page_params(request)
    rows = runtime_of(request).store.list_documents(key, limit + 1, after_id)
    items = [_record(r, "document_id", "name", "chars", "created_at") for r in rows]
    return JSONResponse(page(items, [r.id for r in rows], limit))
