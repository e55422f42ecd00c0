"""Placeholder until built (issue 4)."""

from starlette.requests import Request
from starlette.responses import JSONResponse


async def list_traces(request: Request) -> JSONResponse:
    return JSONResponse({"code": "not_implemented", "message": "not built yet"}, status_code=501)


async def post_feedback(request: Request) -> JSONResponse:
    return JSONResponse({"code": "not_implemented", "message": "not built yet"}, status_code=501)
