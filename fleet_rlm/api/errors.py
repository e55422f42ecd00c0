"""The error body of PROTOCOL.md, ``{"code", "message"}``, and the app's exception handlers."""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from fleet_rlm.errors import FleetError

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "request_too_large",
    422: "invalid_request",
    503: "unavailable",
}


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"code": code, "message": message}, status_code=status)


async def fleet_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, FleetError)
    return error_response(exc.status, exc.code, exc.message)


async def http_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}; see PROTOCOL.md for the routes"
    return error_response(exc.status_code, code, message)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(
        500, "internal_error", "the server failed unexpectedly; its log has the details"
    )


EXCEPTION_HANDLERS = {
    FleetError: fleet_error_handler,
    HTTPException: http_error_handler,
    Exception: unexpected_error_handler,
}
