"""Auth on every route and stream, and one identity never reaching another's session."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from fleet_rlm.config import Settings
from tests.integration.conftest import SECRET
from tests.integration.wsclient import Client, new_session, recv, send, until_terminal

pytestmark = pytest.mark.integration

SESSION_ROUTES = [
    ("GET", "/api/v1/sessions/{sid}"),
    ("DELETE", "/api/v1/sessions/{sid}"),
    ("GET", "/api/v1/sessions/{sid}/documents"),
]


def _tokens() -> dict[str, str | None]:
    now = int(time.time())
    return {
        "missing": None,
        "expired": jwt.encode(
            {"sub": "alice", "workspace_id": "w1", "exp": now - 60}, SECRET, "HS256"
        ),
        "forged": jwt.encode(
            {"sub": "alice", "workspace_id": "w1", "exp": now + 600},
            "not-the-secret-but-just-as-long-000000",
            "HS256",
        ),
        "garbage": "abc.def.ghi",
    }


@pytest.mark.parametrize("kind", ["missing", "expired", "forged", "garbage"])
@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/api/v1/sessions"),
        ("GET", "/api/v1/runtime/status"),
        ("POST", "/api/v1/sessions/s1/documents"),
    ]
    + [(m, p.format(sid="s1")) for m, p in SESSION_ROUTES],
)
def test_bad_tokens_get_401(base_url: str, kind: str, method: str, path: str) -> None:
    token = _tokens()[kind]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer = httpx.request(
        method, base_url + path, headers=headers, json={"name": "a", "text": "b"}
    )
    assert answer.status_code == 401
    body = answer.json()
    assert set(body) == {"code", "message"} and body["message"]


def test_health_and_ready_need_no_token(base_url: str) -> None:
    assert httpx.get(base_url + "/health").json()["ok"] is True
    assert httpx.get(base_url + "/ready").status_code == 200


@pytest.mark.parametrize("kind", ["missing", "expired", "forged", "garbage"])
@pytest.mark.parametrize(
    "path", ["/api/v1/ws/execution", "/api/v1/ws/execution/events?session_id=s1"]
)
async def test_bad_tokens_refused_on_websockets(base_url: str, kind: str, path: str) -> None:
    from websockets.asyncio.client import connect

    token = _tokens()[kind]
    url = base_url.replace("http", "ws", 1) + path
    if token:
        url += ("&" if "?" in url else "?") + f"access_token={token}"
    with pytest.raises((InvalidStatus, ConnectionClosed)):
        async with connect(url) as ws:
            await recv(ws, 5)


async def test_identity_fields_in_query_refused(client: Client) -> None:
    answer = client.http.get("/api/v1/sessions", params={"user_id": "bob"})
    assert answer.status_code == 422 and answer.json()["code"] == "unsupported_identity_fields"
    with pytest.raises((InvalidStatus, ConnectionClosed)):
        async with client.chat(user_id="bob") as ws:
            await recv(ws, 5)


async def test_other_users_session_unreachable_everywhere(
    client: Client, other_client: Client, settings: Settings
) -> None:
    sid = new_session("private")
    client.attach(sid, "secret-notes", "the password is swordfish\n")
    async with client.chat() as ws:
        await send(ws, {"type": "message", "session_id": sid, "content": "hello"})
        mine = await until_terminal(ws)
    # HTTP: the other identity sees nothing of it.
    assert sid not in [
        s["session_id"] for s in other_client.http.get("/api/v1/sessions").json()["items"]
    ]
    assert sid in [s["session_id"] for s in client.http.get("/api/v1/sessions").json()["items"]]
    assert other_client.http.get(f"/api/v1/sessions/{sid}").status_code == 404
    assert other_client.http.get(f"/api/v1/sessions/{sid}/documents").json()["items"] == []
    assert other_client.http.delete(f"/api/v1/sessions/{sid}").status_code == 404
    # Streams: the same session id under another identity is another, empty session.
    async with other_client.chat() as ws:
        await send(ws, {"type": "resume", "session_id": sid, "after_seq": 0})
        await send(ws, {"type": "ping"})
        assert await recv(ws, 5) == {"type": "pong"}
        await send(ws, {"type": "cancel", "session_id": sid})
        assert (await recv(ws, 5))["code"] == "no_turn_running"
    async with other_client.viewer(sid, after_seq=0) as viewer:
        with pytest.raises(TimeoutError):
            await recv(viewer, 2)
    # The owner's session is untouched.
    detail = client.http.get(f"/api/v1/sessions/{sid}").json()
    assert len(detail["turns"]) == 1
    assert mine[-1]["data"]["kind"] == "final"
    # Deleting it removes it for its owner.
    assert client.http.delete(f"/api/v1/sessions/{sid}").status_code == 204
    assert client.http.get(f"/api/v1/sessions/{sid}").status_code == 404
