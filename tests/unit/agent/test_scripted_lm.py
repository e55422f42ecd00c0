"""The scripted LM: rule matching, output rendering, and driving real DSPy modules."""

from __future__ import annotations

import asyncio
import pickle
from pathlib import Path

import dspy
import pytest

from fleet_rlm.agent.lm import GuardedLM
from fleet_rlm.agent.scripted_lm import ScriptedEngine, ScriptMissError, scripted_lm
from fleet_rlm.errors import ConfigError

# ReAct's two prompts: each step asks for next_thought/next_tool_name/next_tool_args; the
# final extract step (a ChainOfThought) asks for reasoning and the signature's outputs.
REACT_RULES = [
    {
        "name": "extract",
        "when": {"contains": "1. `reasoning`"},
        "outputs": {"reasoning": "add returned 5", "answer": "5"},
    },
    {
        "name": "finish",
        "when": {"contains": ["next_tool_name", "observation_0"]},
        "outputs": {"next_thought": "I have it", "next_tool_name": "finish", "next_tool_args": {}},
    },
    {
        "name": "call_add",
        "when": {"contains": "next_tool_name"},
        "outputs": {
            "next_thought": "add the numbers",
            "next_tool_name": "add",
            "next_tool_args": {"a": 2, "b": 3},
        },
    },
]


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_drives_a_two_step_react_to_the_answer(write_rules) -> None:
    lm = scripted_lm(write_rules(REACT_RULES))
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        result = dspy.ReAct("question -> answer", tools=[add], max_iters=4)(question="2 + 3?")

    assert result.answer == "5"
    assert result.trajectory["tool_name_0"] == "add"
    assert result.trajectory["observation_0"] == 5
    assert result.trajectory["tool_name_1"] == "finish"
    assert lm.engine.matched == ["call_add", "finish", "extract"]


def test_react_with_chat_adapter_too(write_rules) -> None:
    lm = scripted_lm(write_rules(REACT_RULES))
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_json_adapter_fallback=False)):
        result = dspy.ReAct("question -> answer", tools=[add], max_iters=4)(question="2 + 3?")

    assert result.answer == "5"
    assert lm.engine.matched == ["call_add", "finish", "extract"]


def test_predict_and_async_predict(write_rules) -> None:
    lm = scripted_lm(write_rules([{"name": "capital", "outputs": {"answer": "Paris"}}]))
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        assert predict(question="Capital of France?").answer == "Paris"

        async def run() -> str:
            return str((await predict.acall(question="Capital of France?")).answer)

        assert asyncio.run(run()) == "Paris"


def test_first_matching_rule_wins(write_rules) -> None:
    lm = scripted_lm(
        write_rules(
            [
                {
                    "name": "specific",
                    "when": {"contains": ["alpha", "beta"]},
                    "outputs": {"answer": "1"},
                },
                {"name": "alpha", "when": {"contains": "alpha"}, "outputs": {"answer": "2"}},
                {"name": "catch_all", "outputs": {"answer": "3"}},
                {"name": "never", "when": {"contains": "alpha"}, "outputs": {"answer": "4"}},
            ]
        )
    )
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        answers = [predict(question=q).answer for q in ("alpha beta", "alpha", "gamma")]

    assert answers == ["1", "2", "3"]
    assert lm.engine.matched == ["specific", "alpha", "catch_all"]


def test_not_contains_regex_and_default(write_rules) -> None:
    lm = scripted_lm(
        write_rules(
            [
                {
                    "name": "numbered",
                    "when": {"regex": r"ticket #\d+", "not_contains": ["urgent", "later"]},
                    "outputs": {"answer": "queued"},
                },
            ],
            default={"answer": "no rule"},
        )
    )
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        assert predict(question="ticket #12").answer == "queued"
        assert predict(question="urgent ticket #12").answer == "no rule"
        assert predict(question="ticket #x").answer == "no rule"
    assert lm.engine.matched == ["numbered", "default", "default"]


def test_missing_rule_names_the_file_and_the_prompt(write_rules) -> None:
    path = write_rules([{"name": "only", "when": {"contains": "zebra"}, "outputs": {}}], name="zoo")
    lm = scripted_lm(path)

    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()), pytest.raises(ScriptMissError) as info:
        dspy.Predict("question -> answer")(question="Where are the penguins?")

    message = str(info.value)
    assert str(path) in message
    assert "Prompt starts:" in message
    assert "Your input fields are" in message  # the start of the prompt JSONAdapter wrote


def test_bad_rules_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"rules": [{"name": "x", "error": "explode"}]}')
    with pytest.raises(ConfigError, match="bad.json"):
        scripted_lm(bad)
    with pytest.raises(ConfigError, match="missing.json"):
        scripted_lm(tmp_path / "missing.json")


def test_lm_and_engine_pickle_with_their_rules(write_rules) -> None:
    lm = scripted_lm(write_rules([{"name": "r", "outputs": {"answer": "ok"}}]))
    copy = pickle.loads(pickle.dumps(lm))

    assert isinstance(copy, GuardedLM)
    with dspy.context(lm=copy, adapter=dspy.JSONAdapter()):
        assert dspy.Predict("question -> answer")(question="?").answer == "ok"
    engine = ScriptedEngine.load_state(lm.engine.dump_state())
    assert engine.script == lm.engine.script
