"""PostHog analytics with the real ``posthog`` client against the stand-in capture server.

Generations run through real DSPy calls on the scripted LM, inside a turn scope, with
``PosthogCallback`` as a DSPy callback; what the stand-in receives is asserted.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import dspy
import pytest

from fleet_rlm.agent.scripted_lm import scripted_lm
from fleet_rlm.config import Settings
from fleet_rlm.identity import SessionKey
from fleet_rlm.observability import posthog_client
from fleet_rlm.observability.analytics import PosthogCallback, analytics_enabled, capture_turn
from fleet_rlm.observability.turn_scope import turn_scope
from tests.standins.posthog_server import PosthogStandIn, closed_port_url

KEY = SessionKey("w1", "alice", "s-analytics")
SECRET = "sk-abc123def456ghi789"
BEARER = "Bearer abcdefghijklmnopqrstuvwxyz0123456789"
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "analytics.json"
    script = {
        "rules": [
            {"name": "fail", "when": {"contains": "FAIL_ME"}, "error": "fail"},
            {
                "name": "leak",
                "when": {"contains": "LEAK_ME"},
                "outputs": {"answer": f"here: api_key={SECRET} " + "y" * 3000},
            },
        ],
        "default": {"answer": "forty-two"},
    }
    path.write_text(json.dumps(script))
    return path


@pytest.fixture
def standin() -> Iterator[PosthogStandIn]:
    with PosthogStandIn() as server:
        yield server
        posthog_client.shutdown(timeout_s=5)
        assert server.unexpected == []  # no /flags, /decide or anything but capture


def _settings(host: str, rules: Path, **extra: object) -> Settings:
    return Settings(
        posthog_enabled=True,
        posthog_host=host,
        posthog_api_key=extra.pop("api_key", "phc_standin_project_key"),
        dspy_lm_scripted_rules=rules,
        **extra,
    )


def _ask(settings: Settings, question: str, turn_index: int = 1, depth: int = 0) -> dspy.LM:
    lm = scripted_lm(settings.dspy_lm_scripted_rules)
    callback = PosthogCallback(settings)
    with (
        turn_scope(KEY, turn_index, depth),
        dspy.context(lm=lm, adapter=dspy.JSONAdapter(), callbacks=[callback]),
    ):
        try:
            dspy.Predict("question -> answer")(question=question)
        except Exception:
            pass  # a failing model is part of what is tested
    return lm


def test_generation_event_carries_model_latency_tokens_and_the_turn(
    standin: PosthogStandIn, rules: Path
) -> None:
    settings = _settings(standin.url, rules)
    lm = _ask(settings, "what is six times seven?", turn_index=3, depth=1)
    posthog_client.flush(timeout_s=10)

    events = standin.wait_for(lambda e: len(e) >= 1)
    assert [e["event"] for e in events] == ["$ai_generation"]
    event = events[0]
    props = event["properties"]
    usage = lm.history[-1]["usage"]
    assert event["distinct_id"] == "alice"
    assert props["$ai_model"] == lm.model and props["$ai_provider"] == "scripted"
    assert isinstance(props["$ai_latency"], float) and props["$ai_latency"] >= 0
    assert props["$ai_input_tokens"] == usage["prompt_tokens"] > 0
    assert props["$ai_output_tokens"] == usage["completion_tokens"] > 0
    assert props["$ai_is_error"] is False
    assert props["$ai_trace_id"] == KEY.run_id(3)  # no MLflow trace here: the run id
    assert props["trace_id"] is None
    assert props["$ai_session_id"] == props["session_id"] == KEY.session_id
    assert (props["workspace_id"], props["turn_index"], props["depth"]) == ("w1", 3, 1)
    assert [m["role"] for m in props["$ai_input"]] == ["system", "user"]
    assert "six times seven" in props["$ai_input"][-1]["content"]
    assert props["$ai_output_choices"][0]["role"] == "assistant"
    assert "forty-two" in props["$ai_output_choices"][0]["content"]
    assert props["$geoip_disable"] is True
    assert all(r.gzipped and r.path == "/batch/" for r in standin.received)


def test_secrets_are_redacted_and_text_truncated(standin: PosthogStandIn, rules: Path) -> None:
    settings = _settings(standin.url, rules, event_text_limit=500)
    question = f"LEAK_ME api_key={SECRET} with Authorization: {BEARER} " + "x" * 5000
    _ask(settings, question)
    capture_turn(
        settings,
        KEY,
        1,
        status="completed",
        latency_s=0.5,
        trace_id=None,
        content=question,
        answer=f"the key is {SECRET}",
    )
    posthog_client.flush(timeout_s=10)

    events = standin.wait_for(lambda e: len(e) >= 2)
    assert sorted(e["event"] for e in events) == ["$ai_generation", "$ai_trace"]
    text = standin.seen_text()
    assert SECRET not in text and "abcdefghijklmnopqrstuvwxyz0123456789" not in text
    assert "[redacted]" in text
    generation = next(e for e in events if e["event"] == "$ai_generation")["properties"]
    user = generation["$ai_input"][-1]["content"]
    assert len(user) < 600 and "more characters]" in user
    assert "more characters]" in generation["$ai_output_choices"][0]["content"]
    turn = next(e for e in events if e["event"] == "$ai_trace")["properties"]
    assert len(turn["$ai_input_state"]) < 600 and "[redacted]" in turn["$ai_output_state"]


def test_failed_generation_is_an_error_event(standin: PosthogStandIn, rules: Path) -> None:
    settings = _settings(standin.url, rules)
    _ask(settings, "FAIL_ME please")
    posthog_client.flush(timeout_s=10)

    events = standin.wait_for(lambda e: len(e) >= 1)
    props = events[0]["properties"]
    assert props["$ai_is_error"] is True
    assert "scripted model failure" in props["$ai_error"]
    assert props["$ai_output_choices"] == []
    assert props["$ai_input_tokens"] is None and props["$ai_output_tokens"] is None


def test_only_generations_inside_a_turn_are_sent(standin: PosthogStandIn, rules: Path) -> None:
    settings = _settings(standin.url, rules)
    lm = scripted_lm(rules)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), callbacks=[PosthogCallback(settings)]):
        dspy.Predict("question -> answer")(question="OUTSIDE a turn")
    _ask(settings, "INSIDE a turn")
    posthog_client.flush(timeout_s=10)

    events = standin.wait_for(lambda e: len(e) >= 1)
    assert len(events) == 1
    assert "INSIDE" in json.dumps(events[0]["properties"]["$ai_input"])
    assert "OUTSIDE" not in standin.seen_text()


def test_turn_event(standin: PosthogStandIn, rules: Path) -> None:
    settings = _settings(standin.url, rules)
    capture_turn(
        settings,
        KEY,
        4,
        status="error",
        latency_s=1.25,
        trace_id="tr-0123abcd",
        error_code="model_timeout",
    )
    posthog_client.flush(timeout_s=10)

    events = standin.wait_for(lambda e: len(e) >= 1)
    assert [e["event"] for e in events] == ["$ai_trace"]
    props = events[0]["properties"]
    assert events[0]["distinct_id"] == "alice"
    assert props["$ai_trace_id"] == props["trace_id"] == "tr-0123abcd"
    assert props["status"] == "error" and props["$ai_is_error"] is True
    assert props["error_code"] == props["$ai_error"] == "model_timeout"
    assert props["$ai_latency"] == 1.25 and props["turn_index"] == 4
    assert props["model"] == f"scripted/{rules.stem}"


def test_off_by_default_imports_and_contacts_nothing(standin: PosthogStandIn, rules: Path) -> None:
    assert not analytics_enabled(Settings())
    assert not analytics_enabled(Settings(posthog_enabled=True))  # no key
    assert not analytics_enabled(Settings(posthog_api_key="phc_x"))  # not enabled
    code = """
import sys, dspy
from fleet_rlm.agent.scripted_lm import scripted_lm
from fleet_rlm.config import Settings
from fleet_rlm.identity import SessionKey
from fleet_rlm.observability import analytics, posthog_client
from fleet_rlm.observability.callbacks import dspy_callbacks
from fleet_rlm.observability.turn_scope import turn_scope

settings = Settings()
key = SessionKey("w1", "alice", "s-off")
callbacks = dspy_callbacks(settings)
with turn_scope(key, 1), dspy.context(
    lm=scripted_lm(settings.dspy_lm_scripted_rules), adapter=dspy.JSONAdapter(),
    callbacks=callbacks,
):
    dspy.Predict("question -> answer")(question="hello")
analytics.capture_turn(settings, key, 1, status="completed", latency_s=0.1, trace_id=None)
posthog_client.shutdown()
print("posthog imported:", "posthog" in sys.modules, "callbacks:", len(callbacks))
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTHOG_")}
    env.update(
        POSTHOG_HOST=standin.url,
        POSTHOG_API_KEY=standin.api_key,
        DSPY_LM_SCRIPTED_RULES=str(rules),
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "posthog imported: False callbacks: 0" in done.stdout, done.stdout
    assert standin.received == [] and standin.unexpected == []


def test_a_hanging_host_does_not_block_the_caller(standin: PosthogStandIn, rules: Path) -> None:
    settings = _settings(standin.url, rules)
    standin.hang()
    _ask(settings, "FIRST question", turn_index=1)
    assert standin.entered.wait(30), "the first batch never reached the stand-in"

    returned = threading.Event()

    def second() -> None:
        _ask(settings, "SECOND question", turn_index=2)
        capture_turn(settings, KEY, 2, status="completed", latency_s=0.1, trace_id=None)
        returned.set()

    caller = threading.Thread(target=second, daemon=True)
    caller.start()
    caller.join(60)
    try:
        # Returned while the stand-in still holds the first batch, before its own events
        # were even sent: they wait in the queue (a blocking client would have sent them).
        assert returned.is_set(), "the caller blocked on a hanging PostHog host"
        assert "SECOND" not in standin.seen_text()
    finally:
        standin.release()
    posthog_client.flush(timeout_s=15)
    events = standin.wait_for(lambda e: any("SECOND" in json.dumps(x) for x in e))
    assert any("SECOND" in json.dumps(e) for e in events), "queued events were lost"


def test_a_dead_host_is_fine_and_warned_about_once(
    rules: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(closed_port_url(), rules)
    caplog.set_level(logging.DEBUG, logger=posthog_client.__name__)
    posthog_client._warned.discard("upload")
    try:
        for turn_index in (1, 2):
            _ask(settings, "anyone there?", turn_index=turn_index)
            capture_turn(
                settings, KEY, turn_index, status="completed", latency_s=0.1, trace_id=None
            )
            posthog_client.flush(timeout_s=20)  # each batch fails, after the SDK's retry
    finally:
        posthog_client.shutdown(timeout_s=5)
    ours = [r for r in caplog.records if r.name == posthog_client.__name__]
    upload = [r for r in ours if "could not be sent" in r.getMessage()]
    assert len(upload) >= 2, [r.getMessage() for r in ours]
    assert [r.levelno for r in upload][:2] == [logging.WARNING, logging.DEBUG]
    assert sum(r.levelno == logging.WARNING for r in upload) == 1
