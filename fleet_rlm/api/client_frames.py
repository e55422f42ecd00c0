"""Validation of the frames a client sends on ``/api/v1/ws/execution``.

``parse_client_frame`` turns raw text into a typed frame or raises ``FrameError`` with
the specific code PROTOCOL.md's clients can branch on. The socket stays open either way.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from fleet_rlm.identity import IDENTITY_FIELDS, SESSION_ID_PATTERN

MAX_FRAME_BYTES_OVER_CONTENT = 16 * 1024
MAX_CLIENT_MESSAGE_ID = 128
KNOWN_FIELDS = {
    "message": {"type", "session_id", "content", "client_message_id"},
    "cancel": {"type", "session_id"},
    "resume": {"type", "session_id", "after_seq"},
    "ping": {"type"},
}


class FrameError(Exception):
    def __init__(self, code: str, message: str, session_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.session_id = session_id

    def frame(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "error", "code": self.code, "message": self.message}
        if self.session_id is not None:
            body["session_id"] = self.session_id
        return body


@dataclass(frozen=True)
class ClientFrame:
    type: str
    session_id: str | None = None
    content: str | None = None
    client_message_id: str | None = None
    after_seq: int = 0


def _session_id(raw: dict[str, Any]) -> str:
    if "session_id" not in raw:
        raise FrameError("missing_field", f"'{raw['type']}' needs a session_id")
    value = raw["session_id"]
    if not isinstance(value, str) or not SESSION_ID_PATTERN.fullmatch(value):
        raise FrameError(
            "invalid_session_id",
            "session_id must be 1 to 128 characters of letters, digits and . _ : -",
        )
    return value


def _content(raw: dict[str, Any], max_bytes: int, session_id: str) -> str:
    if "content" not in raw:
        raise FrameError("missing_field", "a message needs 'content'", session_id)
    content = raw["content"]
    if not isinstance(content, str):
        raise FrameError("invalid_field", "'content' must be a string", session_id)
    if not content.strip():
        raise FrameError("empty_message", "'content' is empty; send some text", session_id)
    if len(content.encode()) > max_bytes:
        raise FrameError(
            "message_too_large",
            f"'content' is over {max_bytes} bytes; attach long text as a document instead",
            session_id,
        )
    return content


def _after_seq(raw: dict[str, Any], session_id: str) -> int:
    value = raw.get("after_seq", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FrameError("invalid_field", "'after_seq' must be a non-negative integer", session_id)
    return value


def _valid_unicode(raw: dict[str, Any]) -> bool:
    for value in raw.values():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return False
    return True


def parse_client_frame(text: str | bytes | None, max_content_bytes: int) -> ClientFrame:
    if text is None:
        raise FrameError("binary_not_supported", "send JSON text frames, not binary frames")
    if len(text) > max_content_bytes * 6 + MAX_FRAME_BYTES_OVER_CONTENT:
        raise FrameError("message_too_large", "the frame is too large")
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise FrameError("invalid_json", "the frame is not valid JSON") from None
    except RecursionError:
        raise FrameError("invalid_json", "the frame nests too deeply") from None
    if not isinstance(raw, dict):
        raise FrameError("invalid_frame", "a frame must be a JSON object")
    kind = raw.get("type")
    if kind is None:
        raise FrameError("missing_type", "a frame needs a 'type'")
    if not isinstance(kind, str) or kind not in KNOWN_FIELDS:
        raise FrameError(
            "unknown_type", f"unknown frame type {kind!r}; one of {sorted(KNOWN_FIELDS)}"
        )
    if IDENTITY_FIELDS & raw.keys():
        raise FrameError(
            "unsupported_identity_fields",
            "workspace_id and user_id come from authentication; remove them from the frame",
        )
    unknown = raw.keys() - KNOWN_FIELDS[kind]
    if unknown:
        raise FrameError("unknown_field", f"'{kind}' does not take {sorted(unknown)}")
    if not _valid_unicode(raw):
        raise FrameError(
            "invalid_field", "a string in the frame is not valid Unicode (a lone surrogate?)"
        )
    if kind == "ping":
        return ClientFrame("ping")
    session_id = _session_id(raw)
    if kind == "cancel":
        return ClientFrame("cancel", session_id)
    if kind == "resume":
        return ClientFrame("resume", session_id, after_seq=_after_seq(raw, session_id))
    content = _content(raw, max_content_bytes, session_id)
    cmid = raw.get("client_message_id")
    if cmid is not None and (not isinstance(cmid, str) or len(cmid) > MAX_CLIENT_MESSAGE_ID):
        raise FrameError(
            "invalid_field",
            f"'client_message_id' must be a string of at most {MAX_CLIENT_MESSAGE_ID} characters",
            session_id,
        )
    return ClientFrame("message", session_id, content, cmid)
