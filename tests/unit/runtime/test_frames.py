"""Redaction and truncation in ``fleet_rlm.runtime.frames``, and that the builders redact."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleet_rlm.identity import SessionKey
from fleet_rlm.runtime.frames import (
    REDACTED,
    chat_event,
    execution_completed,
    execution_started,
    execution_step,
    redact,
    truncate,
)

KEY = SessionKey("w1", "alice", "s1")
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJzdWIiOiJhbGljZSIsImV4cCI6MTl9"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
)


# --- keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "token",
        "access_token",
        "refresh-token",
        "TOKEN",
        "secret",
        "client_secret",
        "api_key",
        "api-key",
        "apikey",
        "ApiKey",
        "OPENAI_API_KEY",
        "password",
        "db_password",
        "authorization",
        "Authorization",
    ],
)
def test_secret_named_key_is_redacted(key: str) -> None:
    assert redact({key: "value", "other": "kept"}) == {key: REDACTED, "other": "kept"}


@pytest.mark.parametrize("value", ["s3cr3t", 12345, {"nested": "x"}, ["a", "b"], None])
def test_whole_value_under_a_secret_key_is_redacted(value: Any) -> None:
    assert redact({"password": value}) == {"password": REDACTED}


def test_secret_keys_are_redacted_at_any_depth() -> None:
    value = {
        "input": {
            "headers": [{"Authorization": "Bearer abc"}, {"accept": "json"}],
            "deeper": {"config": {"llm": {"api_key": "k", "model": "m"}}},
        },
        "list": [[{"secret": 1}]],
    }
    assert redact(value) == {
        "input": {
            "headers": [{"Authorization": REDACTED}, {"accept": "json"}],
            "deeper": {"config": {"llm": {"api_key": REDACTED, "model": "m"}}},
        },
        "list": [[{"secret": REDACTED}]],
    }


@pytest.mark.parametrize("key", ["name", "model", "session_id", "trace_id", "span_id", "key"])
def test_ordinary_keys_are_kept(key: str) -> None:
    assert redact({key: "plain"}) == {key: "plain"}


def test_non_string_keys_are_kept() -> None:
    assert redact({1: "one", None: "none"}) == {1: "one", None: "none"}


def test_redact_does_not_change_its_argument() -> None:
    value = {"a": {"token": "t"}, "b": ["Bearer abcdefghijkl"]}
    snapshot = json.loads(json.dumps(value))
    redact(value)
    assert value == snapshot


def test_tuples_come_back_as_lists_and_scalars_unchanged() -> None:
    assert redact(("a", 1)) == ["a", 1]
    assert [redact(v) for v in (1, 2.5, True, None)] == [1, 2.5, True, None]


# --- values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("header was Bearer abcdefghijklmnop, then", "Bearer abcdefghijklmnop"),
        ("lowercase bearer abc.def-ghi_jkl/mn=", "bearer abc.def-ghi_jkl/mn="),
        ("key sk-abcdefgh12345678 in text", "sk-abcdefgh12345678"),
        ("project key sk-proj-AbC123_xyz-789 here", "sk-proj-AbC123_xyz-789"),
        (f"jwt {JWT} leaked", JWT),
        (f"Authorization: Bearer {JWT}", f"Bearer {JWT}"),
    ],
    ids=["bearer", "bearer-lowercase", "sk", "sk-proj", "jwt", "bearer-jwt"],
)
def test_secret_looking_string_inside_text_is_redacted(text: str, secret: str) -> None:
    out = redact(text)
    assert secret not in out
    assert out == text.replace(secret, REDACTED)


def test_every_secret_in_one_text_is_redacted() -> None:
    text = f"a sk-aaaa1111aaaa b Bearer bbbbbbbbbbbb c {JWT} d"
    assert redact(text) == f"a {REDACTED} b {REDACTED} c {REDACTED} d"


def test_secret_strings_are_redacted_in_lists_and_under_ordinary_keys() -> None:
    value = {"output": {"lines": ["ok", "got sk-1234567890abcdef"]}}
    assert redact(value) == {"output": {"lines": ["ok", f"got {REDACTED}"]}}


@pytest.mark.parametrize(
    "text",
    [
        "plain text without secrets",
        "Bearer short",  # under eight characters: not a credential
        "sk-short",
        "task-management and disk-usage",  # 'sk-' inside a word
        "eyJ alone",
    ],
)
def test_ordinary_text_is_kept(text: str) -> None:
    assert redact(text) == text


# --- truncate ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "abc", "x" * 10])
def test_truncate_keeps_text_within_the_limit(text: str) -> None:
    assert truncate(text, 10) == text


def test_truncate_cuts_and_says_how_much_is_left() -> None:
    assert truncate("x" * 25, 10) == "x" * 10 + "... [15 more characters]"


def test_truncate_one_over_the_limit() -> None:
    assert truncate("abcdefghijk", 10) == "abcdefghij... [1 more characters]"


# --- builders ------------------------------------------------------------------------


def test_chat_event_redacts_text_and_payload() -> None:
    frame = chat_event(
        KEY,
        7,
        "tool_result",
        turn_index=2,
        text="called with sk-abcdefgh12345678",
        payload={"args": {"api_key": "k"}, "headers": {"authorization": "x"}},
        trace_id="tr-1",
    )
    data = frame["data"]
    assert frame["type"] == "event"
    assert data["text"] == f"called with {REDACTED}"
    assert data["payload"] == {
        "args": {"api_key": REDACTED},
        "headers": {"authorization": REDACTED},
    }
    assert (data["session_id"], data["turn_index"], data["seq"], data["trace_id"]) == (
        "s1",
        2,
        7,
        "tr-1",
    )
    assert data["timestamp"].endswith("Z")


def test_chat_event_has_exactly_the_protocol_fields() -> None:
    data = chat_event(KEY, 1, "status", turn_index=None)["data"]
    assert set(data) == {
        "kind",
        "text",
        "payload",
        "session_id",
        "turn_index",
        "seq",
        "timestamp",
        "trace_id",
    }
    assert data["payload"] == {}


def test_execution_step_redacts_input_and_output() -> None:
    step = {
        "id": "st-1",
        "type": "tool",
        "input": {"password": "hunter2", "query": "Bearer abcdefghijklmnop"},
        "output": {"result": "ok", "token": "t"},
    }
    frame = execution_step(KEY, 9, 3, step)
    assert frame["step"]["input"] == {"password": REDACTED, "query": REDACTED}
    assert frame["step"]["output"] == {"result": "ok", "token": REDACTED}
    assert set(frame["step"]) == {
        "id",
        "parent_id",
        "type",
        "label",
        "depth",
        "input",
        "output",
        "timestamp",
        "span_id",
    }
    assert (frame["type"], frame["run_id"], frame["seq"]) == ("execution_step", "w1:alice:s1:3", 9)


def test_execution_started_and_completed_shapes() -> None:
    started = execution_started(KEY, 4, 3, "tr-9")
    assert started == {
        "type": "execution_started",
        "run_id": "w1:alice:s1:3",
        "seq": 4,
        "workspace_id": "w1",
        "user_id": "alice",
        "session_id": "s1",
        "turn_index": 3,
        "trace_id": "tr-9",
    }
    completed = execution_completed(KEY, 5, 3, "ok", 12)
    assert completed == {
        "type": "execution_completed",
        "run_id": "w1:alice:s1:3",
        "seq": 5,
        "summary": {"status": "ok", "duration_ms": 12},
    }


@pytest.mark.parametrize(
    "value",
    [
        {"max_tokens": 512, "tokens_used": 3},
        "fit an sk-learn-estimator on it",
        "a bearer instrument",
    ],
    ids=["token-count-keys", "sk-word", "bearer-word"],
)
def test_ordinary_words_and_counts_are_kept(value: object) -> None:
    assert redact(value) == value


def test_password_assignment_in_text_is_redacted() -> None:
    assert "hunter2" not in redact("login with password=hunter2 please")
