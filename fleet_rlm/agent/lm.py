"""The language models an agent turn talks to: which one, its limits, its guard, its errors.

``build_planner_lm(settings)`` picks the planner LM, in this order:

1. scripted, when ``DSPY_LM_SCRIPTED_RULES`` names a rules file (tests; see
   ``docs/scripted-lm.md`` and ``fleet_rlm.agent.scripted_lm``);
2. configured, when ``DSPY_LM_MODEL`` is set: any LiteLLM model string, with
   ``DSPY_LM_API_BASE`` / ``DSPY_LM_API_KEY`` passed through (an
   OpenAI-compatible server is ``openai/<model>`` plus the base URL);
3. embedded: SmolLM2-135M served on 127.0.0.1 by llama.cpp
   (``fleet_rlm.agent.local_model``), started on first use.

``build_delegate_lm`` does the same for the delegate models, falling back to
the planner's. ``build_adapter`` gives the adapter to use with them in
``dspy.context(lm=..., adapter=...)``, and ``describe_models`` names them for a
status page without starting anything.

Every LM built here is a ``GuardedLM``: before each request it runs the checks
installed with ``lm_guard`` (the session runtime installs one that raises
``TurnCancelled`` once the turn is cancelled), and a check's exception leaves
the DSPy module call unchanged. DSPy's callbacks cannot do this: ``with_callbacks``
logs and swallows what a callback raises, and DSPy wraps whatever an engine
raises in ``LMUnexpectedError``, so the check runs in ``GuardedLM.__call__``
(before callbacks and engine) and ``GuardedLM`` unwraps a check's exception
raised deeper down (the scripted LM checks between its delay steps).

Requests are bounded by ``LM_TIMEOUT_S`` and never retried (``num_retries=0``),
so a failing model fails within about the timeout; responses are not cached.
``classify_model_error`` maps whatever DSPy, lm15 or LiteLLM raised to a
``ModelError`` whose code is ``model_timeout``, ``model_unavailable`` or
``model_output_unparseable``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import dspy
import httpx
from dspy import lm15
from dspy.utils.exceptions import (
    AdapterParseError,
    ContextWindowExceededError,
    LMError,
    LMStreamAssemblyError,
    LMTimeoutError,
    LMUnexpectedError,
)

from fleet_rlm.config import Settings
from fleet_rlm.errors import ModelError

logger = logging.getLogger(__name__)

ModelSource = Literal["scripted", "configured", "embedded"]
ModelRole = Literal["planner", "delegate", "delegate_small"]

# --- the guard ---------------------------------------------------------------------------------

Check = Callable[[], None]

# The checks live in DSPy's own per-context settings (a ContextVar underneath), so they follow
# the context like any ``dspy.context`` value and are also handed to the worker threads of
# DSPy's ParallelExecutor (dspy.Parallel, Evaluate), which copies those settings but not
# other context variables.
_CHECKS_KEY = "fleet_rlm_lm_checks"
# Set on an exception a check raised, so GuardedLM can find it under DSPy's wrapping.
_GUARD_MARK = "_fleet_rlm_raised_by_lm_guard"


def _installed_checks() -> tuple[Check, ...]:
    return tuple(dspy.settings.get(_CHECKS_KEY) or ())


@contextmanager
def lm_guard(check: Check) -> Iterator[None]:
    """Run ``check`` before every request any LM from this module makes in this context.

    Guards nest; inner and outer checks all run, outer first. The scope is that of
    ``dspy.context``: this thread or asyncio task, what copies its context
    (``asyncio.to_thread``, ``dspy.RLM``'s batched queries) and DSPy's parallel
    executor threads, not threads started without a copy. If ``check`` raises, that
    exception object propagates out of the DSPy module call.
    """
    with dspy.settings.context(**{_CHECKS_KEY: (*_installed_checks(), check)}):
        yield


def run_lm_guards() -> None:
    """Run the checks installed with ``lm_guard``; re-raise the first failure, marked as theirs."""
    for check in _installed_checks():
        try:
            check()
        except BaseException as exc:
            try:
                setattr(exc, _GUARD_MARK, True)
            except AttributeError:  # an exception type with __slots__; cannot be marked
                pass
            raise


def _raised_by_guard(exc: BaseException) -> BaseException | None:
    """The guard's exception in ``exc``'s cause chain, if DSPy wrapped one."""
    return next((link for link in _chain(exc) if getattr(link, _GUARD_MARK, False)), None)


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what it wraps (``__cause__``, else ``__context__``), outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


class GuardedLM(dspy.LM):
    """A ``dspy.LM`` that runs the ``lm_guard`` checks before each request.

    Only the public entry points are overridden (``__call__`` and ``acall``, which
    adapters, ``dspy.RLM``'s ``llm_query`` and user code all use); ``forward`` is
    left alone so DSPy keeps treating the LM as a managed, non-legacy one.
    """

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        run_lm_guards()
        try:
            return super().__call__(prompt, messages=messages, **kwargs)
        except Exception as exc:
            stopped = _raised_by_guard(exc)
            if stopped is None:
                raise
        raise stopped

    async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        run_lm_guards()
        try:
            return await super().acall(prompt, messages=messages, **kwargs)
        except Exception as exc:
            stopped = _raised_by_guard(exc)
            if stopped is None:
                raise
        raise stopped


# --- errors ------------------------------------------------------------------------------------

_TIMEOUT_TYPES: tuple[type[BaseException], ...] = (
    LMTimeoutError,
    lm15.TimeoutError,
    TimeoutError,  # includes socket.timeout and asyncio.TimeoutError
    httpx.TimeoutException,
)
# Timeouts of libraries not imported here (LiteLLM, the OpenAI SDK, lm15's transport layer,
# whose ReadTimeout DSPy reports as LMTransportError): matched by class name.
_TIMEOUT_NAMES = frozenset(
    {"Timeout", "APITimeoutError", "ReadTimeout", "ConnectTimeout", "WriteTimeout", "PoolTimeout"}
)
_UNAVAILABLE_TYPES: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted
    httpx.TransportError,
    lm15.TransportError,
    lm15.ServerError,
)
_UNAVAILABLE_NAMES = frozenset(
    {"APIConnectionError", "ServiceUnavailableError", "InternalServerError", "BadGatewayError"}
)
_UNPARSEABLE_TYPES: tuple[type[BaseException], ...] = (AdapterParseError, LMStreamAssemblyError)
# The order of precedence when a cause chain holds more than one: a timeout reported as a
# transport error is a timeout.
_KINDS = ("model_timeout", "model_output_unparseable", "model_unavailable")


def _kind(exc: BaseException) -> str | None:
    """What one exception means, ignoring what it wraps; None when it says nothing specific."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, _TIMEOUT_TYPES) or names & _TIMEOUT_NAMES:
        return "model_timeout"
    if isinstance(exc, _UNPARSEABLE_TYPES):
        return "model_output_unparseable"
    if isinstance(exc, _UNAVAILABLE_TYPES) or names & _UNAVAILABLE_NAMES:
        return "model_unavailable"
    if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError):
        return "model_unavailable"  # DNS (socket.gaierror), unreachable network, ...
    if isinstance(exc, LMError) and not isinstance(exc, LMUnexpectedError):
        return "model_unavailable"  # auth, rate limit, bad request, 5xx, not configured
    return None


def _model_of(exc: BaseException) -> str | None:
    current: BaseException | None = exc
    while current is not None:
        model = getattr(current, "model", None)
        if isinstance(model, str) and model:
            return model
        current = current.__cause__
    return None


def classify_model_error(exc: BaseException, *, model: str | None = None) -> ModelError:
    """Map an exception from an LM call to a ``ModelError`` a user can act on.

    The whole cause chain is read, since DSPy wraps engine failures and lm15 and
    LiteLLM wrap transport ones: a timeout anywhere in it makes ``model_timeout``
    (lm15 reports a read timeout as a transport error), else an adapter parse
    failure ``model_output_unparseable``, else ``model_unavailable`` (also for
    anything not recognised). A ``ModelError`` is returned as it is. Pass only
    exceptions from model calls: a ``TurnCancelled`` from ``lm_guard`` is the
    caller's to handle first. Use as ``raise classify_model_error(exc) from exc``.
    """
    if isinstance(exc, ModelError):
        return exc
    name = model or _model_of(exc) or "the language model"
    chain = _chain(exc)
    kinds = [_kind(link) for link in chain]
    kind = next((k for k in _KINDS if k in kinds), "model_unavailable")
    found = chain[kinds.index(kind)] if kind in kinds else exc
    detail = f"{type(found).__name__}: {str(found).strip()[:300]}"
    if kind == "model_timeout":
        message = (
            f"{name} did not answer in time ({detail}). Try again; if it keeps happening,"
            " raise LM_TIMEOUT_S or use a faster model (DSPY_LM_MODEL)."
        )
    elif kind == "model_output_unparseable":
        message = (
            f"{name} answered in a form the agent could not parse ({detail}). Try again,"
            " or use a stronger model (DSPY_LM_MODEL)."
        )
    elif isinstance(found, ContextWindowExceededError):
        message = (
            f"{name} refused a prompt longer than its context window ({detail})."
            " Start a new session or use a model with a larger context (DSPY_LM_MODEL)."
        )
    else:
        message = (
            f"{name} could not be reached or failed ({detail}). Check DSPY_LM_MODEL,"
            " DSPY_LM_API_BASE and DSPY_LM_API_KEY and that the model server is running,"
            " then try again."
        )
    return ModelError(message, code=kind)


# --- the factory -------------------------------------------------------------------------------


def model_source(settings: Settings) -> ModelSource:
    """Where the planner comes from under these settings."""
    if settings.dspy_lm_scripted_rules is not None:
        return "scripted"
    if settings.dspy_lm_model:
        return "configured"
    return "embedded"


def _configured_model(settings: Settings, role: ModelRole) -> str | None:
    if role == "delegate_small" and settings.dspy_delegate_lm_small_model:
        return settings.dspy_delegate_lm_small_model
    if role in ("delegate", "delegate_small") and settings.dspy_delegate_lm_model:
        return settings.dspy_delegate_lm_model
    return settings.dspy_lm_model


def configured_lm(model: str, settings: Settings) -> GuardedLM:
    """A LiteLLM / lm15 model string with the configured base URL, key and timeout."""
    kwargs: dict[str, Any] = {}
    if settings.dspy_lm_api_base:
        kwargs["api_base"] = settings.dspy_lm_api_base
    if settings.dspy_lm_api_key:
        kwargs["api_key"] = settings.dspy_lm_api_key
    return GuardedLM(model, timeout=settings.lm_timeout_s, num_retries=0, cache=False, **kwargs)


def build_lm(settings: Settings, role: ModelRole = "planner") -> GuardedLM:
    """The LM for ``role``: scripted, configured, else the embedded model (started if needed)."""
    if settings.dspy_lm_scripted_rules is not None:
        from fleet_rlm.agent.scripted_lm import scripted_lm

        logger.debug("%s LM: scripted from %s", role, settings.dspy_lm_scripted_rules)
        return scripted_lm(settings.dspy_lm_scripted_rules, timeout_s=settings.lm_timeout_s)
    model = _configured_model(settings, role)
    if model:
        logger.debug("%s LM: configured %s", role, model)
        return configured_lm(model, settings)
    if not getattr(settings, "embedded_model", True):
        raise ModelError(
            "no language model is configured and the embedded one is off;"
            " set DSPY_LM_MODEL (and DSPY_LM_API_BASE / DSPY_LM_API_KEY), or EMBEDDED_MODEL=true",
            code="model_unavailable",
        )
    from fleet_rlm.agent.local_model import embedded_lm, ensure_local_model

    base_url = ensure_local_model(settings)
    logger.debug("%s LM: embedded at %s", role, base_url)
    return embedded_lm(base_url, settings)


def build_planner_lm(settings: Settings) -> GuardedLM:
    """The planner LM (see the module docstring for the order of choice)."""
    return build_lm(settings, "planner")


def build_delegate_lm(settings: Settings, *, small: bool = False) -> GuardedLM:
    """The delegate LM (``DSPY_DELEGATE_LM_MODEL`` / ``..._SMALL_MODEL``), else the planner's."""
    return build_lm(settings, "delegate_small" if small else "delegate")


def build_adapter(settings: Settings) -> dspy.JSONAdapter:
    """The adapter for these LMs: ``dspy.JSONAdapter``; when some role runs on the embedded
    model, a subclass that also sends that model a schema where DSPy would send none."""
    roles: tuple[ModelRole, ...] = ("planner", "delegate", "delegate_small")
    if model_source(settings) != "scripted" and not all(
        _configured_model(settings, role) for role in roles
    ):
        from fleet_rlm.agent.local_model import EmbeddedJSONAdapter

        return EmbeddedJSONAdapter()
    return dspy.JSONAdapter()


def describe_models(settings: Settings) -> dict[str, str | None]:
    """Names of the planner and delegate models, for a status page; starts nothing."""
    source = model_source(settings)
    rules = settings.dspy_lm_scripted_rules
    if rules is not None:
        from fleet_rlm.agent.scripted_lm import scripted_model_name

        name = scripted_model_name(rules)
        names = {"planner": name, "delegate": name, "delegate_small": name}
        api_base = None
    else:
        from fleet_rlm.agent.local_model import EMBEDDED_MODEL, local_base_url

        names = {
            role: _configured_model(settings, role) or EMBEDDED_MODEL
            for role in ("planner", "delegate", "delegate_small")
        }
        api_base = settings.dspy_lm_api_base
        if source == "embedded":
            api_base = local_base_url(settings.local_model_port)
    return {"source": source, **names, "api_base": api_base}
