"""``parse_client_frame``: what a valid frame parses to, and the code each bad frame gets.

The same bad frames are sent over a real socket in ``tests/integration/test_bad_frames.py``;
here the parser is called directly, so edge cases of size and precedence are cheap.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleet_rlm.api.client_frames import (
    MAX_CLIENT_MESSAGE_ID,
    MAX_FRAME_BYTES_OVER_CONTENT,
    ClientFrame,
    FrameError,
    parse_client_frame,
)

MAX = 1024  # a small content limit keeps the size cases fast


def parse(frame: Any, max_bytes: int = MAX) -> ClientFrame:
    text = frame if isinstance(frame, str | bytes) or frame is None else json.dumps(frame)
    return parse_client_frame(text, max_bytes)


def refusal(frame: Any, max_bytes: int = MAX) -> FrameError:
    with pytest.raises(FrameError) as caught:
        parse(frame, max_bytes)
    return caught.value


# --- valid frames --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param({"type": "ping"}, ClientFrame("ping"), id="ping"),
        pytest.param(
            {"type": "message", "session_id": "s1", "content": "hello"},
            ClientFrame("message", "s1", "hello"),
            id="message",
        ),
        pytest.param(
            {"type": "message", "session_id": "s1", "content": "hi", "client_message_id": "m-1"},
            ClientFrame("message", "s1", "hi", "m-1"),
            id="message-with-client-message-id",
        ),
        pytest.param(
            {"type": "message", "session_id": "s1", "content": "hi", "client_message_id": None},
            ClientFrame("message", "s1", "hi", None),
            id="message-with-null-client-message-id",
        ),
        pytest.param(
            {"type": "cancel", "session_id": "s1"}, ClientFrame("cancel", "s1"), id="cancel"
        ),
        pytest.param(
            {"type": "resume", "session_id": "s1", "after_seq": 41},
            ClientFrame("resume", "s1", after_seq=41),
            id="resume",
        ),
        pytest.param(
            {"type": "resume", "session_id": "s1"},
            ClientFrame("resume", "s1", after_seq=0),
            id="resume-without-after-seq-is-from-zero",
        ),
        pytest.param(
            {"type": "resume", "session_id": "s1", "after_seq": 0},
            ClientFrame("resume", "s1", after_seq=0),
            id="resume-after-zero",
        ),
    ],
)
def test_valid_frame_parses(frame: dict[str, Any], expected: ClientFrame) -> None:
    assert parse(frame) == expected


@pytest.mark.parametrize(
    "session_id",
    ["a", "A" * 128, "abc-DEF_012.x:y", "...", "::", "-"],
    ids=["one-char", "128-chars", "every-allowed-kind", "dots", "colons", "dash"],
)
def test_session_id_edges_that_are_valid(session_id: str) -> None:
    assert parse({"type": "cancel", "session_id": session_id}).session_id == session_id


def test_frame_as_utf8_bytes_parses_like_text() -> None:
    raw = json.dumps({"type": "message", "session_id": "s1", "content": "grüße"}).encode()
    assert parse_client_frame(raw, MAX) == ClientFrame("message", "s1", "grüße")


def test_content_is_kept_verbatim() -> None:
    content = "  line one\n\tline two  "
    assert parse({"type": "message", "session_id": "s", "content": content}).content == content


def test_content_of_exactly_the_maximum_bytes_is_accepted() -> None:
    frame = parse({"type": "message", "session_id": "s", "content": "x" * MAX})
    assert frame.content is not None and len(frame.content) == MAX


def test_content_limit_counts_utf8_bytes_not_characters() -> None:
    fits = "é" * (MAX // 2)  # two bytes each
    assert parse({"type": "message", "session_id": "s", "content": fits}).content == fits
    error = refusal({"type": "message", "session_id": "s", "content": fits + "é"})
    assert error.code == "message_too_large"


def test_escaped_content_up_to_the_maximum_is_not_refused_by_the_frame_guard() -> None:
    """``\\uXXXX`` escapes make a frame about 6x its content; that must still parse."""
    content = "\u0001" * MAX
    text = json.dumps({"type": "message", "session_id": "s", "content": content})
    assert len(text) > 6 * MAX
    assert parse_client_frame(text, MAX).content == content


def test_client_message_id_of_the_maximum_length_is_accepted() -> None:
    cmid = "m" * MAX_CLIENT_MESSAGE_ID
    frame = parse({"type": "message", "session_id": "s", "content": "x", "client_message_id": cmid})
    assert frame.client_message_id == cmid


# --- bad frames ----------------------------------------------------------------------

LONG_ID = "s" * 129


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param("not json", "invalid_json", id="not-json"),
        pytest.param("", "invalid_json", id="empty-text"),
        pytest.param('{"type": "ping"', "invalid_json", id="truncated-json"),
        pytest.param(b"\xff\xfe", "invalid_json", id="bytes-not-utf8"),
        pytest.param(None, "binary_not_supported", id="binary"),
        pytest.param("[]", "invalid_frame", id="array"),
        pytest.param('"ping"', "invalid_frame", id="string"),
        pytest.param("42", "invalid_frame", id="number"),
        pytest.param("null", "invalid_frame", id="null"),
        pytest.param({}, "missing_type", id="missing-type"),
        pytest.param({"type": None}, "missing_type", id="null-type"),
        pytest.param({"type": "shout"}, "unknown_type", id="unknown-type"),
        pytest.param({"type": "PING"}, "unknown_type", id="type-is-case-sensitive"),
        pytest.param({"type": 7}, "unknown_type", id="type-not-a-string"),
        pytest.param({"type": ["ping"]}, "unknown_type", id="type-a-list"),
        pytest.param({"type": "message", "content": "x"}, "missing_field", id="no-session-id"),
        pytest.param({"type": "cancel"}, "missing_field", id="cancel-no-session-id"),
        pytest.param({"type": "resume"}, "missing_field", id="resume-no-session-id"),
        pytest.param(
            {"type": "cancel", "session_id": LONG_ID}, "invalid_session_id", id="session-id-129"
        ),
        pytest.param(
            {"type": "cancel", "session_id": "a b"}, "invalid_session_id", id="session-id-space"
        ),
        pytest.param(
            {"type": "cancel", "session_id": "a/b"}, "invalid_session_id", id="session-id-slash"
        ),
        pytest.param(
            {"type": "cancel", "session_id": "sé"}, "invalid_session_id", id="session-id-non-ascii"
        ),
        pytest.param({"type": "cancel", "session_id": ""}, "invalid_session_id", id="empty-id"),
        pytest.param({"type": "cancel", "session_id": 5}, "invalid_session_id", id="int-id"),
        pytest.param({"type": "cancel", "session_id": None}, "invalid_session_id", id="null-id"),
        pytest.param(
            {"type": "cancel", "session_id": "s1\n"},
            "invalid_session_id",
            id="session-id-trailing-newline",
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "content": "x", "workspace_id": "w"},
            "unsupported_identity_fields",
            id="workspace-id",
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "content": "x", "user_id": "u"},
            "unsupported_identity_fields",
            id="user-id",
        ),
        pytest.param(
            {"type": "ping", "user_id": "u"}, "unsupported_identity_fields", id="user-id-on-ping"
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "content": "x", "extra": 1},
            "unknown_field",
            id="unknown-field",
        ),
        pytest.param({"type": "ping", "session_id": "s"}, "unknown_field", id="ping-session-id"),
        pytest.param(
            {"type": "cancel", "session_id": "s", "after_seq": 1},
            "unknown_field",
            id="field-of-another-type",
        ),
        pytest.param({"type": "message", "session_id": "s"}, "missing_field", id="no-content"),
        pytest.param(
            {"type": "message", "session_id": "s", "content": 5}, "invalid_field", id="int-content"
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "content": None},
            "invalid_field",
            id="null-content",
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "content": ["x"]},
            "invalid_field",
            id="list-content",
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "content": ""}, "empty_message", id="empty"
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "content": " \n\t"},
            "empty_message",
            id="whitespace-content",
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "content": "x" * (MAX + 1)},
            "message_too_large",
            id="content-over-max",
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "content": "x", "client_message_id": "m" * 129},
            "invalid_field",
            id="client-message-id-too-long",
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "content": "x", "client_message_id": 3},
            "invalid_field",
            id="client-message-id-not-a-string",
        ),
        pytest.param(
            {"type": "resume", "session_id": "s", "after_seq": -1},
            "invalid_field",
            id="negative-after-seq",
        ),
        pytest.param(
            {"type": "resume", "session_id": "s", "after_seq": 1.5},
            "invalid_field",
            id="float-after-seq",
        ),
        pytest.param(
            {"type": "resume", "session_id": "s", "after_seq": 2.0},
            "invalid_field",
            id="integral-float-after-seq",
        ),
        pytest.param(
            {"type": "resume", "session_id": "s", "after_seq": "3"},
            "invalid_field",
            id="string-after-seq",
        ),
        pytest.param(
            {"type": "resume", "session_id": "s", "after_seq": True},
            "invalid_field",
            id="bool-after-seq",
        ),
        pytest.param(
            {"type": "resume", "session_id": "s", "after_seq": None},
            "invalid_field",
            id="null-after-seq",
        ),
        pytest.param(
            '{"type": "resume", "session_id": "s", "after_seq": NaN}',
            "invalid_field",
            id="nan-after-seq",
        ),
    ],
)
def test_bad_frame_gets_its_code(frame: Any, code: str) -> None:
    error = refusal(frame)
    assert error.code == code
    assert error.message


def test_frame_far_over_the_limit_is_refused_before_parsing() -> None:
    text = "[" + " " * (6 * MAX + MAX_FRAME_BYTES_OVER_CONTENT) + "]"
    assert refusal(text).code == "message_too_large"


# --- precedence: which problem is reported when a frame has several ------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        pytest.param(
            {"type": "message", "workspace_id": "w"},
            "unsupported_identity_fields",
            id="identity-before-missing-session",
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "user_id": "u", "extra": 1},
            "unsupported_identity_fields",
            id="identity-before-unknown-field",
        ),
        pytest.param(
            {"type": "message", "extra": 1}, "unknown_field", id="unknown-field-before-missing"
        ),
        pytest.param(
            {"type": "message", "session_id": "a b", "content": ""},
            "invalid_session_id",
            id="session-before-content",
        ),
        pytest.param(
            {"type": "message", "session_id": "s", "content": "", "client_message_id": 3},
            "empty_message",
            id="content-before-client-message-id",
        ),
    ],
)
def test_the_first_problem_found_is_reported(frame: dict[str, Any], code: str) -> None:
    assert refusal(frame).code == code


# --- the error frame -----------------------------------------------------------------


def test_error_frame_names_the_session_once_it_is_known() -> None:
    error = refusal({"type": "message", "session_id": "s9", "content": ""})
    assert error.frame() == {
        "type": "error",
        "code": "empty_message",
        "message": error.message,
        "session_id": "s9",
    }


def test_error_frame_without_a_session_has_no_session_id() -> None:
    error = refusal("{")
    assert error.frame() == {"type": "error", "code": "invalid_json", "message": error.message}
