"""classify_model_error: every way a model fails becomes one of three ModelError codes."""

from __future__ import annotations

import socket
import time

import dspy
import httpx
import pytest
from dspy.utils.exceptions import LMServerError, LMTimeoutError, LMTransportError, LMUnexpectedError

from fleet_rlm.agent.lm import build_planner_lm, classify_model_error
from fleet_rlm.agent.scripted_lm import scripted_lm
from fleet_rlm.config import Settings
from fleet_rlm.errors import ModelError


def run_predict(lm: dspy.LM) -> BaseException:
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        with pytest.raises(Exception) as info:
            dspy.Predict("question -> answer")(question="?")
    return info.value


def test_scripted_timeout_is_model_timeout(write_rules) -> None:
    exc = run_predict(scripted_lm(write_rules([{"name": "t", "error": "timeout"}])))
    assert isinstance(exc, LMTimeoutError)
    assert classify_model_error(exc).code == "model_timeout"


def test_scripted_delay_beyond_the_timeout_times_out_at_the_timeout(write_rules) -> None:
    lm = scripted_lm(write_rules([{"name": "slow", "delay_s": 10, "outputs": {}}]), timeout_s=0.2)
    started = time.monotonic()
    exc = run_predict(lm)
    assert time.monotonic() - started < 1.0
    assert classify_model_error(exc).code == "model_timeout"


def test_scripted_failure_is_model_unavailable(write_rules) -> None:
    exc = run_predict(scripted_lm(write_rules([{"name": "f", "error": "fail"}])))
    assert isinstance(exc, LMServerError)
    error = classify_model_error(exc)
    assert isinstance(error, ModelError)
    assert error.code == "model_unavailable"
    assert "scripted/rules" in error.message


def test_wrong_fields_are_model_output_unparseable(write_rules) -> None:
    exc = run_predict(scripted_lm(write_rules([{"name": "w", "outputs": {"other": "x"}}])))
    assert classify_model_error(exc).code == "model_output_unparseable"


def test_refused_connection_is_model_unavailable_at_once(closed_port: int) -> None:
    settings = Settings(
        dspy_lm_model="openai/test-model",
        dspy_lm_api_base=f"http://127.0.0.1:{closed_port}/v1",
        dspy_lm_api_key="test",
    )
    started = time.monotonic()
    exc = run_predict(build_planner_lm(settings))
    assert time.monotonic() - started < 5.0  # no retries
    error = classify_model_error(exc)
    assert error.code == "model_unavailable"
    assert "DSPY_LM_API_BASE" in error.message


def test_silent_server_times_out_within_about_the_timeout(silent_server: int) -> None:
    settings = Settings(
        dspy_lm_model="openai/test-model",
        dspy_lm_api_base=f"http://127.0.0.1:{silent_server}/v1",
        dspy_lm_api_key="test",
        lm_timeout_s=0.5,
    )
    started = time.monotonic()
    exc = run_predict(build_planner_lm(settings))
    assert time.monotonic() - started < 2.0  # one attempt, bounded by the timeout
    assert classify_model_error(exc).code == "model_timeout"


def _wrapped(inner: BaseException, outer: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise outer from exc
    except BaseException as exc:
        return exc


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (TimeoutError("timed out"), "model_timeout"),
        (httpx.ReadTimeout("slow"), "model_timeout"),
        (LMTimeoutError("slow", model="m"), "model_timeout"),
        (ConnectionRefusedError(111, "refused"), "model_unavailable"),
        (socket.gaierror(-2, "Name or service not known"), "model_unavailable"),
        (httpx.ConnectError("refused"), "model_unavailable"),
        (LMServerError("503", model="m", status=503), "model_unavailable"),
        (_wrapped(TimeoutError("t"), LMTransportError("read failed")), "model_timeout"),
        (_wrapped(TimeoutError("t"), LMUnexpectedError("engine bug")), "model_timeout"),
        (_wrapped(ConnectionResetError(), LMUnexpectedError("x")), "model_unavailable"),
        (RuntimeError("something else"), "model_unavailable"),
    ],
)
def test_classification(exc: BaseException, code: str) -> None:
    error = classify_model_error(exc)
    assert isinstance(error, ModelError)
    assert error.code == code
    assert error.status == 502


def test_model_error_passes_through() -> None:
    original = ModelError("already classified", code="model_timeout")
    assert classify_model_error(original) is original
