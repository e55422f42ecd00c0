"""The LM factory: which LM under which settings, its limits, adapters, names; no model runs."""

from __future__ import annotations

import dspy
import pytest

from fleet_rlm.agent import local_model
from fleet_rlm.agent.lm import (
    GuardedLM,
    build_adapter,
    build_delegate_lm,
    build_planner_lm,
    describe_models,
    model_source,
)
from fleet_rlm.agent.local_model import (
    EMBEDDED_MODEL,
    EmbeddedJSONAdapter,
    embedded_lm,
    ensure_local_model,
)
from fleet_rlm.agent.scripted_lm import ScriptedEngine
from fleet_rlm.config import Settings
from fleet_rlm.errors import ModelError


def test_scripted_rules_win(write_rules) -> None:
    rules = write_rules([{"name": "r", "outputs": {"answer": "x"}}], name="demo")
    settings = Settings(dspy_lm_scripted_rules=rules, dspy_lm_model="openai/ignored")

    lm = build_planner_lm(settings)

    assert model_source(settings) == "scripted"
    assert isinstance(lm, GuardedLM) and isinstance(lm.engine, ScriptedEngine)
    assert lm.model == "scripted/demo"
    assert type(build_adapter(settings)) is dspy.JSONAdapter
    assert describe_models(settings) == {
        "source": "scripted",
        "planner": "scripted/demo",
        "delegate": "scripted/demo",
        "delegate_small": "scripted/demo",
        "api_base": None,
    }


def test_configured_model_carries_base_key_timeout_and_no_retries() -> None:
    settings = Settings(
        dspy_lm_model="openai/planner",
        dspy_delegate_lm_model="openai/delegate",
        dspy_lm_api_base="http://127.0.0.1:9/v1",
        dspy_lm_api_key="secret",
        lm_timeout_s=7.5,
    )

    lm = build_planner_lm(settings)

    assert isinstance(lm, GuardedLM)
    assert lm.model == "openai/planner"
    assert lm.num_retries == 0 and lm.cache is False
    assert lm.kwargs["timeout"] == 7.5
    assert lm.kwargs["api_base"] == "http://127.0.0.1:9/v1"
    assert lm.kwargs["api_key"] == "secret"
    assert build_delegate_lm(settings).model == "openai/delegate"
    assert build_delegate_lm(settings, small=True).model == "openai/delegate"
    assert type(build_adapter(settings)) is dspy.JSONAdapter
    described = describe_models(settings)
    assert described["source"] == "configured"
    assert (described["planner"], described["delegate"]) == ("openai/planner", "openai/delegate")
    assert "secret" not in str(described)


def test_embedded_is_the_default_and_describing_it_starts_nothing() -> None:
    settings = Settings(local_model_port=20999)
    assert model_source(settings) == "embedded"
    assert describe_models(settings) == {
        "source": "embedded",
        "planner": EMBEDDED_MODEL,
        "delegate": EMBEDDED_MODEL,
        "delegate_small": EMBEDDED_MODEL,
        "api_base": "http://127.0.0.1:20999/v1",
    }
    assert isinstance(build_adapter(settings), EmbeddedJSONAdapter)


def test_embedded_model_off_and_nothing_configured_is_a_model_error() -> None:
    settings = Settings().model_copy(update={"embedded_model": False})
    with pytest.raises(ModelError) as info:
        build_planner_lm(settings)
    assert info.value.code == "model_unavailable"
    assert "DSPY_LM_MODEL" in info.value.message


def test_ensure_uses_whatever_already_answers(health_server: int, monkeypatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("nothing should be started")

    monkeypatch.setattr(local_model, "_ensure_in_process", refuse)
    monkeypatch.setattr(local_model, "_ensure_actor", refuse)

    url = ensure_local_model(Settings(local_model_port=health_server))

    assert url == f"http://127.0.0.1:{health_server}/v1"


def test_embedded_lm_is_declared_schema_capable(health_server: int) -> None:
    settings = Settings(local_model_port=health_server, local_model_max_tokens=77, lm_timeout_s=9)
    lm = embedded_lm(ensure_local_model(settings), settings)

    assert lm.model == EMBEDDED_MODEL
    assert lm.supports_response_schema
    assert "response_format" in lm.supported_params
    assert lm.kwargs["max_tokens"] == 77 and lm.kwargs["timeout"] == 9
    assert lm.num_retries == 0


def test_embedded_adapter_sends_a_schema_for_react_only_to_the_embedded_model(
    health_server: int,
) -> None:
    settings = Settings(local_model_port=health_server)
    embedded = embedded_lm(ensure_local_model(settings), settings)
    other = build_planner_lm(
        Settings(dspy_lm_model="openai/x", dspy_lm_api_base="http://127.0.0.1:9/v1")
    )
    react = dspy.ReAct("question -> answer", tools=[lambda: "x"])
    signature = react.react.signature
    adapter = EmbeddedJSONAdapter()

    sent: dict[str, object] = {}
    adapter._prepare_response_format(embedded, sent, signature)
    schema = sent["response_format"]["json_schema"]["schema"]  # type: ignore[index]
    assert schema["required"] == ["next_thought", "next_tool_name", "next_tool_args"]
    assert set(schema["properties"]["next_tool_name"]["enum"]) == {"<lambda>", "finish"}
    assert schema["properties"]["next_tool_args"]["type"] == "object"

    untouched: dict[str, object] = {}
    adapter._prepare_response_format(other, untouched, signature)
    reference: dict[str, object] = {}
    dspy.JSONAdapter()._prepare_response_format(other, reference, signature)
    assert untouched == reference
