"""``authenticate``: the principal of a request or handshake, from hand-built ASGI scopes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import jwt
import pytest
from starlette.requests import HTTPConnection

from fleet_rlm.api.auth import DEFAULT_PRINCIPAL, authenticate, issue_token
from fleet_rlm.config import DEFAULT_JWT_SECRET, Settings
from fleet_rlm.errors import AuthError
from fleet_rlm.identity import Principal

SECRET = "unit-test-secret-" + "k" * 64  # long enough for HS512 too, without a warning
DEBUG_HEADERS = {"X-Debug-Workspace-Id": "dbg-ws", "X-Debug-User-Id": "dbg-user"}


def connection(
    kind: str = "http", headers: dict[str, str] | None = None, query: dict[str, str] | None = None
) -> HTTPConnection:
    scope = {
        "type": kind,
        "path": "/api/v1/ws/execution" if kind == "websocket" else "/api/v1/sessions",
        "query_string": urlencode(query or {}).encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
    }
    return HTTPConnection(scope)


def auth_off(app_env: str = "local") -> Settings:
    return Settings(app_env=app_env, auth_required=False)


def auth_on(app_env: str = "local") -> Settings:
    return Settings(app_env=app_env, auth_required=True, auth_jwt_secret=SECRET)


def token(claims: dict[str, Any], secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "alice", "workspace_id": "w1", "exp": int(time.time()) + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def refused(conn: HTTPConnection, settings: Settings, *, websocket: bool = False) -> AuthError:
    with pytest.raises(AuthError) as caught:
        authenticate(conn, settings, websocket=websocket)
    assert caught.value.status == 401
    return caught.value


# --- auth off ------------------------------------------------------------------------


@pytest.mark.parametrize("app_env", ["local", "staging", "production"])
@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_auth_off_without_headers_is_the_default_principal(app_env: str, kind: str) -> None:
    conn = connection(kind)
    principal = authenticate(conn, auth_off(app_env), websocket=kind == "websocket")
    assert principal == DEFAULT_PRINCIPAL == Principal("default", "local")


def test_local_debug_headers_set_the_identity() -> None:
    principal = authenticate(connection(headers=DEBUG_HEADERS), auth_off())
    assert principal == Principal("dbg-ws", "dbg-user")


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"X-Debug-Workspace-Id": "dbg-ws"}, Principal("dbg-ws", "local")),
        ({"X-Debug-User-Id": "dbg-user"}, Principal("default", "dbg-user")),
    ],
    ids=["workspace-only", "user-only"],
)
def test_one_debug_header_keeps_the_default_for_the_other(
    headers: dict[str, str], expected: Principal
) -> None:
    assert authenticate(connection(headers=headers), auth_off()) == expected


def test_local_websocket_debug_query_parameters_set_the_identity() -> None:
    query = {"debug_workspace_id": "q-ws", "debug_user_id": "q-user"}
    principal = authenticate(connection("websocket", query=query), auth_off(), websocket=True)
    assert principal == Principal("q-ws", "q-user")


def test_websocket_debug_headers_win_over_query_parameters() -> None:
    conn = connection("websocket", headers=DEBUG_HEADERS, query={"debug_user_id": "q-user"})
    assert authenticate(conn, auth_off(), websocket=True) == Principal("dbg-ws", "dbg-user")


def test_debug_query_parameters_are_ignored_on_http() -> None:
    query = {"debug_workspace_id": "q-ws", "debug_user_id": "q-user"}
    assert authenticate(connection(query=query), auth_off()) == DEFAULT_PRINCIPAL


@pytest.mark.parametrize("app_env", ["staging", "production"])
@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_outside_local_debug_headers_and_query_are_ignored(app_env: str, kind: str) -> None:
    query = {"debug_workspace_id": "q-ws", "debug_user_id": "q-user"}
    conn = connection(kind, headers=DEBUG_HEADERS, query=query)
    principal = authenticate(conn, auth_off(app_env), websocket=kind == "websocket")
    assert principal == DEFAULT_PRINCIPAL


def test_debug_headers_do_not_bypass_required_auth_even_in_local() -> None:
    error = refused(connection(headers=DEBUG_HEADERS), auth_on("local"))
    assert error.code == "missing_token"


def test_with_auth_on_the_token_identity_wins_over_debug_headers() -> None:
    headers = {**DEBUG_HEADERS, **bearer(token(claims()))}
    assert authenticate(connection(headers=headers), auth_on()) == Principal("w1", "alice")


@pytest.mark.parametrize(
    "headers",
    [{"X-Debug-User-Id": "a/b"}, {"X-Debug-Workspace-Id": "w s"}, {"X-Debug-User-Id": "u" * 129}],
    ids=["slash", "space", "too-long"],
)
def test_malformed_debug_identity_is_refused(headers: dict[str, str]) -> None:
    assert refused(connection(headers=headers), auth_off()).code == "invalid_token"


# --- auth on: JWTs -------------------------------------------------------------------


@pytest.mark.parametrize("app_env", ["local", "staging", "production"])
def test_valid_token_gives_its_claims_identity(app_env: str) -> None:
    conn = connection(headers=bearer(token(claims())))
    assert authenticate(conn, auth_on(app_env)) == Principal("w1", "alice")


def test_issue_token_round_trips() -> None:
    settings = auth_on()
    conn = connection(headers=bearer(issue_token(settings, "bob", "w9")))
    assert authenticate(conn, settings) == Principal("w9", "bob")


def test_bearer_scheme_is_case_insensitive() -> None:
    conn = connection(headers={"Authorization": f"bearer {token(claims())}"})
    assert authenticate(conn, auth_on()) == Principal("w1", "alice")


def test_token_without_workspace_claim_is_in_the_default_workspace() -> None:
    conn = connection(headers=bearer(token(claims(workspace_id=None))))
    assert authenticate(conn, auth_on()) == Principal("default", "alice")


@pytest.mark.parametrize("kind", ["http", "websocket"])
def test_no_token_is_missing_token(kind: str) -> None:
    error = refused(connection(kind), auth_on(), websocket=kind == "websocket")
    assert error.code == "missing_token"


def test_expired_token_is_token_expired() -> None:
    expired = token(claims(exp=int(time.time()) - 30))
    assert refused(connection(headers=bearer(expired)), auth_on()).code == "token_expired"


def _tampered() -> str:
    header, _, signature = token(claims()).split(".")
    payload = jwt.utils.base64url_encode(b'{"sub":"mallory","exp":9999999999}').decode()
    return f"{header}.{payload}.{signature}"


QUIET_SHORT_KEY = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: token(claims(), secret="other-secret-" + "z" * 64), id="forged"),
        pytest.param(
            lambda: token(claims(), secret=DEFAULT_JWT_SECRET),
            id="signed-with-default",
            marks=QUIET_SHORT_KEY,
        ),
        pytest.param(_tampered, id="tampered-payload"),
        pytest.param(lambda: token(claims(), algorithm="HS512"), id="wrong-alg-hs512"),
        pytest.param(lambda: jwt.encode(claims(), None, algorithm="none"), id="alg-none"),
        pytest.param(lambda: token(claims(sub=None)), id="missing-sub"),
        pytest.param(lambda: token(claims(exp=None)), id="missing-exp"),
        pytest.param(lambda: token(claims(sub="")), id="empty-sub"),
        pytest.param(lambda: token(claims(sub="a/b")), id="malformed-sub"),
        pytest.param(lambda: token(claims(workspace_id="w/1")), id="malformed-workspace"),
        pytest.param(lambda: token(claims(workspace_id=7)), id="workspace-not-a-string"),
        pytest.param(lambda: "not-a-jwt", id="garbage"),
    ],
)
def test_bad_token_is_invalid_token(make: Callable[[], str]) -> None:
    assert refused(connection(headers=bearer(make())), auth_on()).code == "invalid_token"


@pytest.mark.parametrize(
    "header",
    ["Basic YWxpY2U6cHc=", "Bearer", "Bearer   ", "Token abc"],
    ids=["basic", "bearer-without-token", "bearer-blank", "other-scheme"],
)
def test_malformed_authorization_header_is_invalid_token(header: str) -> None:
    error = refused(connection(headers={"Authorization": header}), auth_on())
    assert error.code == "invalid_token"


# --- access_token query parameter ----------------------------------------------------


def test_access_token_query_works_on_websockets() -> None:
    conn = connection("websocket", query={"access_token": token(claims())})
    assert authenticate(conn, auth_on(), websocket=True) == Principal("w1", "alice")


def test_access_token_query_is_ignored_on_http() -> None:
    conn = connection(query={"access_token": token(claims())})
    assert refused(conn, auth_on()).code == "missing_token"


def test_access_token_query_is_checked_like_a_header() -> None:
    expired = token(claims(exp=int(time.time()) - 30))
    conn = connection("websocket", query={"access_token": expired})
    assert refused(conn, auth_on(), websocket=True).code == "token_expired"


def test_websocket_header_wins_over_access_token_query() -> None:
    conn = connection(
        "websocket",
        headers=bearer(token(claims(sub="header-user"))),
        query={"access_token": token(claims(sub="query-user"))},
    )
    assert authenticate(conn, auth_on(), websocket=True).user_id == "header-user"


def test_websocket_missing_token_message_mentions_the_query_parameter() -> None:
    error = refused(connection("websocket"), auth_on(), websocket=True)
    assert "access_token" in error.message
