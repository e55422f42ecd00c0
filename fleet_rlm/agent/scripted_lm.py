"""A scripted language model: replays output fields from rules in a JSON file, offline.

For tests that assert on an agent's path (which tool, which answer) without a
network or a real model. ``scripted_lm(path)`` returns an ordinary ``dspy.LM``
(a ``GuardedLM``) whose engine is ``ScriptedEngine``: DSPy 3.4's supported way
to write a custom LM is an engine with ``complete(Request) -> Response`` passed
to ``dspy.LM(engine=...)``, not a ``BaseLM.forward`` override. The rules file
format is documented in ``docs/scripted-lm.md``; in short, the first rule whose
``when`` matches the whole prompt (system and messages joined) gives the
``outputs``, which are returned as the JSON object ``dspy.JSONAdapter`` parses
(or as ``[[ ## field ## ]]`` sections when the prompt is a ``ChatAdapter`` one).

A rule may wait (``delay_s``, in steps of 50 ms with the ``lm_guard`` checks
run between them, so a cancelled turn stops mid-wait) and may fail like a
real model (``error: "timeout"`` raises lm15's ``TimeoutError``, which DSPy
reports as ``LMTimeoutError``; ``"fail"`` raises a server error). A prompt no
rule matches, with no ``default``, raises ``ScriptMissError`` naming the file
and the start of the prompt. The engine and the LM pickle (rules included), so
either can be built in one process and used in a Ray actor.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from dspy import lm15
from dspy.lm15 import Message, Request, Response, TextPart, Usage
from dspy.utils.exceptions import LMConfigurationError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleet_rlm.agent.lm import GuardedLM, run_lm_guards
from fleet_rlm.errors import ConfigError

logger = logging.getLogger(__name__)

SLEEP_STEP_S = 0.05
PROMPT_PREVIEW_CHARS = 300
_CHAT_COMPLETED = "[[ ## completed ## ]]"


def _as_list(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


class RuleMatch(BaseModel):
    """When a rule applies; every condition given must hold (an empty ``when`` always matches)."""

    model_config = ConfigDict(extra="forbid")

    contains: str | list[str] | None = None
    not_contains: str | list[str] | None = None
    regex: str | None = None

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            re.compile(value)
        return value

    def matches(self, prompt: str) -> bool:
        if not all(part in prompt for part in _as_list(self.contains)):
            return False
        if any(part in prompt for part in _as_list(self.not_contains)):
            return False
        return self.regex is None or re.search(self.regex, prompt) is not None


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    when: RuleMatch = Field(default_factory=RuleMatch)
    outputs: dict[str, Any] = Field(default_factory=dict)
    delay_s: float = Field(default=0.0, ge=0.0)
    error: Literal["timeout", "fail"] | None = None


class Script(BaseModel):
    """A parsed rules file."""

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(default_factory=list)
    default: dict[str, Any] | None = None

    @classmethod
    def load(cls, path: Path) -> Script:
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"DSPY_LM_SCRIPTED_RULES={path} cannot be used ({exc}); point it at a rules file"
                " as docs/scripted-lm.md describes"
            ) from exc

    def pick(self, prompt: str) -> Rule | None:
        """The first rule whose ``when`` matches, else a rule made of ``default``, else None."""
        for rule in self.rules:
            if rule.when.matches(prompt):
                return rule
        if self.default is not None:
            return Rule(name="default", outputs=self.default)
        return None


class ScriptMissError(LMConfigurationError):
    """No rule matched the prompt and the rules file has no ``default``.

    An ``LMError``, so DSPy passes it through unchanged rather than wrapping it.
    """


def scripted_model_name(rules_path: Path | str) -> str:
    """The model string of the scripted LM for ``rules_path`` (shown in traces and status)."""
    stem = Path(rules_path).stem or "rules"
    return f"scripted/{stem}"


def prompt_text(request: Request) -> str:
    """The text rules match against: the system prompt and every message, joined."""
    parts: list[str] = []
    if isinstance(request.system, str):
        parts.append(request.system)
    elif request.system:
        parts.append("".join(getattr(part, "text", "") or "" for part in request.system))
    for message in request.messages:
        parts.append(
            "\n".join(getattr(part, "text", "") or "" for part in message.parts if part is not None)
        )
    return "\n\n".join(parts)


def render_outputs(outputs: dict[str, Any], prompt: str, request: Request) -> str:
    """Outputs as the adapter that made the prompt parses them: JSON, or ChatAdapter sections."""
    if request.config.response_format is None and _CHAT_COMPLETED in prompt:
        sections = [
            f"[[ ## {name} ## ]]\n{value if isinstance(value, str) else json.dumps(value)}"
            for name, value in outputs.items()
        ]
        return "\n\n".join([*sections, _CHAT_COMPLETED])
    return json.dumps(outputs, ensure_ascii=False)


class ScriptedEngine:
    """DSPy engine that answers each request from a rules file (see the module docstring).

    ``timeout_s``, when given, bounds ``delay_s`` the way a request timeout bounds
    a real model: a longer delay waits ``timeout_s`` and then times out.
    ``matched`` lists the names of the rules used, in order.
    """

    supports_function_calling = False
    supports_reasoning = False
    supports_response_schema = False
    supported_params: frozenset[str] = frozenset()

    def __init__(self, rules_path: Path | str, *, timeout_s: float | None = None) -> None:
        self.rules_path = Path(rules_path)
        self.timeout_s = timeout_s
        self.script = Script.load(self.rules_path)
        self.matched: list[str] = []
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def dump_state(self) -> dict[str, Any]:
        return {"rules_path": str(self.rules_path), "timeout_s": self.timeout_s}

    @classmethod
    def load_state(cls, state: dict[str, Any]) -> ScriptedEngine:
        return cls(state["rules_path"], timeout_s=state.get("timeout_s"))

    def plan(self, request: Request) -> tuple[Rule, str, float]:
        """The rule for ``request``, the prompt it matched, and how long to wait first."""
        prompt = prompt_text(request)
        rule = self.script.pick(prompt)
        if rule is None:
            preview = prompt[:PROMPT_PREVIEW_CHARS]
            raise ScriptMissError(
                f"no rule in {self.rules_path} matches this prompt and the file has no"
                f' "default"; add a rule whose "when" matches it. Prompt starts: {preview!r}',
                model=request.model,
            )
        with self._lock:
            self.matched.append(rule.name)
        logger.debug("scripted LM %s: rule %r", self.rules_path.name, rule.name)
        wait = rule.delay_s
        if self.timeout_s is not None:
            wait = min(wait, self.timeout_s)
        return rule, prompt, wait

    def answer(self, request: Request, rule: Rule, prompt: str) -> Response:
        """Raise the rule's error if the wait ran out or it names one; else its outputs."""
        timed_out = self.timeout_s is not None and rule.delay_s > self.timeout_s
        if timed_out or rule.error == "timeout":
            raise lm15.TimeoutError(
                f"scripted timeout (rule {rule.name!r} in {self.rules_path.name})",
                provider="scripted",
            )
        if rule.error == "fail":
            raise lm15.ServerError(
                f"scripted model failure (rule {rule.name!r} in {self.rules_path.name})",
                provider="scripted",
                status=500,
            )
        text = render_outputs(rule.outputs, prompt, request)
        return Response(
            id=f"scripted-{rule.name}",
            model=request.model,
            message=Message.assistant([TextPart(text=text)]),
            finish_reason="stop",
            usage=Usage(input_tokens=len(prompt) // 4, output_tokens=len(text) // 4),
        )

    def complete(self, request: Request) -> Response:
        rule, prompt, wait = self.plan(request)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            run_lm_guards()
            time.sleep(min(SLEEP_STEP_S, left))
        return self.answer(request, rule, prompt)

    def stream(self, request: Request) -> Iterator[Any]:
        return iter(lm15.response_to_events(self.complete(request)))

    def close(self) -> None:
        return None


class AsyncScriptedEngine:
    """The async face of a ``ScriptedEngine``: the same rules, waiting with ``asyncio.sleep``."""

    def __init__(self, sync: ScriptedEngine) -> None:
        self.sync = sync

    async def complete(self, request: Request) -> Response:
        rule, prompt, wait = self.sync.plan(request)
        deadline = time.monotonic() + wait
        while (left := deadline - time.monotonic()) > 0:
            run_lm_guards()
            await asyncio.sleep(min(SLEEP_STEP_S, left))
        return self.sync.answer(request, rule, prompt)

    async def stream(self, request: Request) -> Any:
        for event in lm15.response_to_events(await self.complete(request)):
            yield event

    async def aclose(self) -> None:
        return None


def scripted_lm(rules_path: Path | str, *, timeout_s: float | None = None) -> GuardedLM:
    """A ``dspy.LM`` that answers from the rules in ``rules_path`` (read once, now)."""
    engine = ScriptedEngine(rules_path, timeout_s=timeout_s)
    return GuardedLM(
        scripted_model_name(rules_path),
        engine=engine,
        async_engine=AsyncScriptedEngine(engine),
        num_retries=0,
        cache=False,
    )
