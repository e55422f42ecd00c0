"""lm_guard: a check that raises stops the turn before the next LM request, unchanged."""

from __future__ import annotations

import asyncio
import time

import dspy
import pytest

from fleet_rlm.agent.lm import configured_lm, lm_guard, run_lm_guards
from fleet_rlm.agent.scripted_lm import scripted_lm
from fleet_rlm.config import Settings
from fleet_rlm.errors import TurnCancelled


class Switch:
    """A cancel flag whose check raises one TurnCancelled instance once set."""

    def __init__(self) -> None:
        self.cancelled = False
        self.calls = 0
        self.error = TurnCancelled("turn cancelled")

    def check(self) -> None:
        self.calls += 1
        if self.cancelled:
            raise self.error


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_check_runs_before_every_request(write_rules) -> None:
    lm = scripted_lm(write_rules([{"name": "r", "outputs": {"answer": "ok"}}]))
    switch = Switch()
    predict = dspy.Predict("question -> answer")
    with lm_guard(switch.check), dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        predict(question="one")
        predict(question="two")
    assert switch.calls == 2


def test_cancelled_check_stops_react_before_the_next_call(write_rules) -> None:
    switch = Switch()

    def cancelling_add(a: int, b: int) -> int:
        """Add two integers."""
        switch.cancelled = True  # cancelled while a tool runs
        return a + b

    lm = scripted_lm(
        write_rules(
            [
                {
                    "name": "call",
                    "when": {"contains": "next_tool_name"},
                    "outputs": {
                        "next_thought": "t",
                        "next_tool_name": "cancelling_add",
                        "next_tool_args": {"a": 1, "b": 2},
                    },
                }
            ]
        )
    )
    agent = dspy.ReAct("question -> answer", tools=[cancelling_add], max_iters=5)
    with lm_guard(switch.check), dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        with pytest.raises(TurnCancelled) as info:
            agent(question="1 + 2?")

    assert info.value is switch.error  # the very exception the check raised
    assert lm.engine.matched == ["call"]  # no request after the cancel


def test_cancel_interrupts_a_delayed_call_mid_sleep(write_rules) -> None:
    lm = scripted_lm(
        write_rules([{"name": "slow", "delay_s": 30.0, "outputs": {"answer": "late"}}])
    )
    switch = Switch()
    deadline = time.monotonic() + 0.3

    def check() -> None:
        switch.cancelled = time.monotonic() > deadline
        switch.check()

    started = time.monotonic()
    with lm_guard(check), dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        with pytest.raises(TurnCancelled) as info:
            dspy.Predict("question -> answer")(question="?")

    assert info.value is switch.error  # unwrapped from DSPy's LMUnexpectedError
    assert 0.25 < time.monotonic() - started < 2.0


def test_cancel_interrupts_an_async_delayed_call(write_rules) -> None:
    lm = scripted_lm(
        write_rules([{"name": "slow", "delay_s": 30.0, "outputs": {"answer": "late"}}])
    )
    switch = Switch()
    predict = dspy.Predict("question -> answer")

    async def run() -> None:
        with lm_guard(switch.check), dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            task = asyncio.ensure_future(predict.acall(question="?"))
            await asyncio.sleep(0.2)
            switch.cancelled = True
            await task

    started = time.monotonic()
    with pytest.raises(TurnCancelled) as info:
        asyncio.run(run())
    assert info.value is switch.error
    assert time.monotonic() - started < 2.0


def test_guard_stops_a_configured_lm_before_any_connection(closed_port: int) -> None:
    settings = Settings(
        dspy_lm_model="openai/never-called",
        dspy_lm_api_base=f"http://127.0.0.1:{closed_port}/v1",
        dspy_lm_api_key="unused",
    )
    lm = configured_lm("openai/never-called", settings)
    switch = Switch()
    switch.cancelled = True
    with lm_guard(switch.check), dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        with pytest.raises(TurnCancelled) as info:
            dspy.Predict("question -> answer")(question="?")
    assert info.value is switch.error
    assert lm.history == []


def test_guards_nest_and_end_with_their_block() -> None:
    order: list[str] = []
    with lm_guard(lambda: order.append("outer")):
        with lm_guard(lambda: order.append("inner")):
            run_lm_guards()
        run_lm_guards()
    run_lm_guards()
    assert order == ["outer", "inner", "outer"]


def test_guard_reaches_dspy_parallel_worker_threads(write_rules) -> None:
    # dspy.Parallel runs items in its own threads, copying DSPy's settings but not other
    # context variables; it also collects per-item errors instead of raising them.
    lm = scripted_lm(write_rules([{"name": "r", "outputs": {"answer": "ok"}}]))
    switch = Switch()
    switch.cancelled = True
    predict = dspy.Predict("question -> answer")
    parallel = dspy.Parallel(num_threads=2, max_errors=5, return_failed_examples=True)
    with lm_guard(switch.check), dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        _, _, errors = parallel([(predict, {"question": "a"}), (predict, {"question": "b"})])
    assert [error is switch.error for error in errors] == [True, True]
    assert lm.engine.matched == []
