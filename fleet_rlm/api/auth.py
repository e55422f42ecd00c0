"""Authentication: the ``Principal`` of a request or WebSocket handshake.

With ``AUTH_REQUIRED=false`` everyone is ``("default", "local")``, which in
``APP_ENV=local`` the debug headers (or, on WebSockets, query parameters) may override.
With ``AUTH_REQUIRED=true`` a HS256 JWT is required: ``Authorization: Bearer`` or, on
WebSockets, ``?access_token=``; claims ``sub`` (user id), ``workspace_id`` and ``exp``.
"""

from __future__ import annotations

import re
import time

import jwt
from starlette.requests import HTTPConnection

from fleet_rlm.config import Settings
from fleet_rlm.errors import AuthError
from fleet_rlm.identity import Principal

DEFAULT_PRINCIPAL = Principal("default", "local")
_ID_PART = re.compile(r"[A-Za-z0-9._:@+-]{1,128}")  # used with fullmatch


def _token(conn: HTTPConnection, websocket: bool) -> str | None:
    header = conn.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise AuthError("Authorization must be 'Bearer <JWT>'", code="invalid_token")
        return value.strip()
    if websocket:
        return conn.query_params.get("access_token")
    return None


def _check_part(name: str, value: object) -> str:
    if not isinstance(value, str) or not _ID_PART.fullmatch(value):
        raise AuthError(f"token claim {name!r} is missing or malformed", code="invalid_token")
    return value


def decode_token(token: str, secret: str) -> Principal:
    try:
        claims = jwt.decode(
            token, secret, algorithms=["HS256"], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError as exc:
        raise AuthError("the token has expired; sign in again", code="token_expired") from exc
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"the token is not valid: {exc}", code="invalid_token") from exc
    return Principal(
        _check_part("workspace_id", claims.get("workspace_id", "default")),
        _check_part("sub", claims.get("sub")),
    )


def issue_token(
    settings: Settings, user_id: str, workspace_id: str = "default", ttl_s: int = 3600
) -> str:
    """A token for ``user_id``; used by the CLI, tests and benchmarks."""
    claims = {"sub": user_id, "workspace_id": workspace_id, "exp": int(time.time()) + ttl_s}
    return jwt.encode(claims, settings.auth_jwt_secret, algorithm="HS256")


def authenticate(conn: HTTPConnection, settings: Settings, *, websocket: bool = False) -> Principal:
    """The caller's principal, or ``AuthError`` (HTTP 401 / WebSocket close 1008)."""
    if settings.auth_required:
        token = _token(conn, websocket)
        if not token:
            raise AuthError(
                "this server requires 'Authorization: Bearer <JWT>'"
                + (" or the access_token query parameter" if websocket else ""),
                code="missing_token",
            )
        return decode_token(token, settings.auth_jwt_secret)
    if settings.app_env == "local":
        workspace = conn.headers.get("x-debug-workspace-id")
        user = conn.headers.get("x-debug-user-id")
        if websocket:
            workspace = workspace or conn.query_params.get("debug_workspace_id")
            user = user or conn.query_params.get("debug_user_id")
        if workspace or user:
            return Principal(
                _check_part("workspace_id", workspace or DEFAULT_PRINCIPAL.workspace_id),
                _check_part("user_id", user or DEFAULT_PRINCIPAL.user_id),
            )
    return DEFAULT_PRINCIPAL
