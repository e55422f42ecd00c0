"""Bad client frames over the real Serve app: each gets its error code and the socket lives on.

Every case of the chat-stream table goes over ONE socket, shared by the module, in
order: after each bad frame a ``ping`` must still get ``pong``. If a case kills the
socket, the next case opens a new one (so one failure does not hide the others) and
``test_every_case_shared_one_socket`` fails. The execution stream answers a bad query
with an error frame and then closes (code 4400).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State

from fleet_rlm.api.client_frames import MAX_FRAME_BYTES_OVER_CONTENT
from fleet_rlm.config import Settings
from tests.integration.wsclient import Client, recv, send

pytestmark = pytest.mark.integration

MAX = 256 * 1024  # the default MESSAGE_MAX_BYTES; test_settings_use_the_default checks it
BAD_REQUEST_CLOSE = 4400
SID = "frames-s1"


def message(**fields: Any) -> dict[str, Any]:
    return {"type": "message", "session_id": SID, "content": "hello", **fields}


def resume(after_seq: Any) -> dict[str, Any]:
    return {"type": "resume", "session_id": SID, "after_seq": after_seq}


def without(frame: dict[str, Any], field: str) -> dict[str, Any]:
    return {k: v for k, v in frame.items() if k != field}


CHAT_CASES = [
    # not a JSON object
    pytest.param("this is not json", "invalid_json", id="not-json"),
    pytest.param("", "invalid_json", id="empty-text"),
    pytest.param('{"type": "ping"', "invalid_json", id="truncated-json"),
    pytest.param('[{"type": "ping"}]', "invalid_frame", id="json-array"),
    pytest.param('"ping"', "invalid_frame", id="json-string"),
    pytest.param("42", "invalid_frame", id="json-number"),
    pytest.param("null", "invalid_frame", id="json-null"),
    pytest.param(b'{"type": "ping"}', "binary_not_supported", id="binary-frame"),
    # type
    pytest.param({"session_id": SID}, "missing_type", id="missing-type"),
    pytest.param({"type": None}, "missing_type", id="null-type"),
    pytest.param({"type": "shout"}, "unknown_type", id="unknown-type"),
    pytest.param({"type": "Ping"}, "unknown_type", id="type-wrong-case"),
    pytest.param({"type": 1}, "unknown_type", id="type-not-a-string"),
    pytest.param({"type": {"name": "ping"}}, "unknown_type", id="type-an-object"),
    # session_id
    pytest.param(without(message(), "session_id"), "missing_field", id="message-no-session-id"),
    pytest.param(message(session_id="s" * 129), "invalid_session_id", id="session-id-129-chars"),
    pytest.param(message(session_id="a b"), "invalid_session_id", id="session-id-space"),
    pytest.param(message(session_id="a/b"), "invalid_session_id", id="session-id-slash"),
    pytest.param(message(session_id="s1;drop"), "invalid_session_id", id="session-id-semicolon"),
    pytest.param(message(session_id="sé"), "invalid_session_id", id="session-id-non-ascii"),
    pytest.param(message(session_id=""), "invalid_session_id", id="session-id-empty"),
    pytest.param(message(session_id=7), "invalid_session_id", id="session-id-int"),
    pytest.param(message(session_id=None), "invalid_session_id", id="session-id-null"),
    pytest.param(message(session_id=["s1"]), "invalid_session_id", id="session-id-list"),
    pytest.param(
        {"type": "cancel", "session_id": "frames-nl\n"},
        "invalid_session_id",
        id="session-id-trailing-newline",
    ),
    # identity and unknown fields
    pytest.param(message(workspace_id="w2"), "unsupported_identity_fields", id="workspace-id"),
    pytest.param(message(user_id="mallory"), "unsupported_identity_fields", id="user-id"),
    pytest.param(
        {"type": "resume", "session_id": SID, "user_id": "mallory"},
        "unsupported_identity_fields",
        id="user-id-on-resume",
    ),
    pytest.param(
        {"type": "ping", "workspace_id": "w2"},
        "unsupported_identity_fields",
        id="workspace-id-on-ping",
    ),
    pytest.param(message(priority="high"), "unknown_field", id="unknown-field"),
    pytest.param({"type": "ping", "session_id": SID}, "unknown_field", id="ping-with-session-id"),
    pytest.param(
        {"type": "cancel", "session_id": SID, "content": "x"},
        "unknown_field",
        id="cancel-with-content",
    ),
    # content
    pytest.param(without(message(), "content"), "missing_field", id="content-missing"),
    pytest.param(message(content=12), "invalid_field", id="content-int"),
    pytest.param(message(content=None), "invalid_field", id="content-null"),
    pytest.param(message(content={"text": "x"}), "invalid_field", id="content-object"),
    pytest.param(message(content=""), "empty_message", id="content-empty"),
    pytest.param(message(content="   \n\t "), "empty_message", id="content-whitespace"),
    pytest.param(message(content="x" * (MAX + 1)), "message_too_large", id="content-over-max"),
    pytest.param(
        message(content="é" * (MAX // 2 + 1)),
        "message_too_large",
        id="content-over-max-in-utf8-bytes",
    ),
    pytest.param(
        json.dumps(message(padding="x" * (6 * MAX + MAX_FRAME_BYTES_OVER_CONTENT))),
        "message_too_large",
        id="frame-over-the-hard-limit",
    ),
    # client_message_id
    pytest.param(
        message(client_message_id="m" * 129), "invalid_field", id="client-message-id-too-long"
    ),
    pytest.param(message(client_message_id=5), "invalid_field", id="client-message-id-int"),
    pytest.param(message(client_message_id=["m"]), "invalid_field", id="client-message-id-list"),
    # resume
    pytest.param({"type": "resume"}, "missing_field", id="resume-no-session-id"),
    pytest.param(resume(-1), "invalid_field", id="resume-negative-after-seq"),
    pytest.param(resume(2.5), "invalid_field", id="resume-float-after-seq"),
    pytest.param(resume(3.0), "invalid_field", id="resume-integral-float-after-seq"),
    pytest.param(resume("4"), "invalid_field", id="resume-string-after-seq"),
    pytest.param(resume(True), "invalid_field", id="resume-true-after-seq"),
    pytest.param(resume(False), "invalid_field", id="resume-false-after-seq"),
    pytest.param(resume(None), "invalid_field", id="resume-null-after-seq"),
    # cancel
    pytest.param({"type": "cancel"}, "missing_field", id="cancel-no-session-id"),
    pytest.param(
        {"type": "cancel", "session_id": "no spaces"},
        "invalid_session_id",
        id="cancel-invalid-session-id",
    ),
]


class SharedSocket:
    """One chat socket for the whole table; reopened only if a case broke it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.ws: ClientConnection | None = None
        self.opened = 0

    async def get(self) -> ClientConnection:
        if self.ws is None or self.ws.state is not State.OPEN:
            self.ws = await self.client.chat()
            self.opened += 1
        return self.ws

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


@pytest.fixture(scope="module")
async def shared(base_url: str, settings: Settings) -> AsyncIterator[SharedSocket]:
    sock = SharedSocket(Client(base_url, settings, user_id="frames-user"))
    yield sock
    await sock.close()


def test_settings_use_the_default_message_limit(settings: Settings) -> None:
    assert settings.message_max_bytes == MAX


@pytest.mark.parametrize(("frame", "code"), CHAT_CASES)
async def test_bad_frame_gets_its_code_and_the_socket_stays_usable(
    shared: SharedSocket, frame: Any, code: str
) -> None:
    ws = await shared.get()
    await ws.send(frame if isinstance(frame, str | bytes) else json.dumps(frame))
    reply = await recv(ws, 10)
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert isinstance(reply["message"], str) and reply["message"]
    await send(ws, {"type": "ping"})
    assert await recv(ws, 10) == {"type": "pong"}


async def test_every_case_shared_one_socket(shared: SharedSocket) -> None:
    ws = await shared.get()
    await send(ws, {"type": "ping"})
    assert await recv(ws, 10) == {"type": "pong"}
    assert shared.opened == 1, "a bad frame closed the chat socket"


@pytest.mark.parametrize("query", [{"user_id": "mallory"}, {"workspace_id": "w2"}])
async def test_identity_fields_in_the_chat_query_refuse_the_handshake(
    client: Client, query: dict[str, str]
) -> None:
    with pytest.raises((InvalidStatus, ConnectionClosed)) as caught:
        async with client.chat(**query) as ws:
            await recv(ws, 5)
    if isinstance(caught.value, ConnectionClosed):
        assert caught.value.rcvd is not None and caught.value.rcvd.code == 1008


# --- the execution stream ------------------------------------------------------------

EVENTS_CASES = [
    pytest.param({}, "invalid_session_id", id="no-session-id"),
    pytest.param({"session_id": ""}, "invalid_session_id", id="session-id-empty"),
    pytest.param({"session_id": "s" * 129}, "invalid_session_id", id="session-id-129-chars"),
    pytest.param({"session_id": "a b"}, "invalid_session_id", id="session-id-space"),
    pytest.param({"session_id": "a/b"}, "invalid_session_id", id="session-id-slash"),
    pytest.param({"session_id": SID, "after_seq": "-1"}, "invalid_field", id="after-seq-negative"),
    pytest.param({"session_id": SID, "after_seq": "abc"}, "invalid_field", id="after-seq-word"),
    pytest.param({"session_id": SID, "after_seq": "1.5"}, "invalid_field", id="after-seq-float"),
    pytest.param({"session_id": SID, "after_seq": ""}, "invalid_field", id="after-seq-empty"),
    pytest.param({"session_id": SID, "after_seq": "0x10"}, "invalid_field", id="after-seq-hex"),
    pytest.param(
        {"session_id": SID, "after_seq": "\u00b2"},
        "invalid_field",
        id="after-seq-superscript-digit",
    ),
]


def events_url(client: Client, query: dict[str, str]) -> str:
    params = httpx.QueryParams({"access_token": client.token, **query})
    return f"{client.ws_base}/api/v1/ws/execution/events?{params}"


@pytest.mark.parametrize(("query", "code"), EVENTS_CASES)
async def test_bad_viewer_query_gets_an_error_frame_then_a_close(
    client: Client, query: dict[str, str], code: str
) -> None:
    async with connect(events_url(client, query)) as ws:
        reply = await recv(ws, 10)
        assert reply["type"] == "error" and reply["code"] == code, reply
        assert reply["message"]
        with pytest.raises(ConnectionClosed):
            await recv(ws, 10)
    assert ws.close_code == BAD_REQUEST_CLOSE
