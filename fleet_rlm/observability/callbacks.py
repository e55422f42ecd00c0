"""The process's DSPy callback registry: MLflow's and PostHog's callbacks, each once.

Every place that runs DSPy (a turn in the session actor's worker thread, a child RLM in
a Ray task, a sweep worker) asks ``dspy_callbacks(settings, *own)`` for the list to hand
to ``dspy.context(callbacks=...)``. The list is built from this registry, not from
``dspy.settings.callbacks``, so it is the same in every thread, task and actor, and a
callback is never there twice however often a process installs.

- MLflow: ``mlflow.dspy.autolog`` is called once per process (it is what makes module,
  predict, adapter and LM spans); the ``MlflowCallback`` it creates is taken into the
  registry. Whether it records anything is switched per turn by ``tracing``.
- PostHog: when ``POSTHOG_ENABLED`` and a key is set, one ``PosthogCallback``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dspy.utils.callback import BaseCallback

from fleet_rlm.config import Settings

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_registry: dict[str, BaseCallback] = {}


def register(name: str, factory: Callable[[], BaseCallback | None]) -> BaseCallback | None:
    """Install the callback under ``name`` unless one is there; return the installed one."""
    with _lock:
        if name not in _registry:
            callback = factory()
            if callback is None:
                return None
            _registry[name] = callback
            logger.info("DSPy callback %r installed (%s)", name, type(callback).__name__)
        return _registry[name]


def installed() -> dict[str, BaseCallback]:
    with _lock:
        return dict(_registry)


def _mlflow_callback() -> BaseCallback | None:
    """Run MLflow's DSPy autolog once and keep the callback it made."""
    import dspy
    import mlflow
    from mlflow.dspy.callback import MlflowCallback

    mlflow.dspy.autolog(silent=True)
    found = [c for c in dspy.settings.callbacks if isinstance(c, MlflowCallback)]
    return found[0] if found else MlflowCallback()


def install_mlflow() -> None:
    register("mlflow", _mlflow_callback)


def _posthog_callback(settings: Settings) -> BaseCallback | None:
    from fleet_rlm.observability.analytics import PosthogCallback, analytics_enabled

    return PosthogCallback(settings) if analytics_enabled(settings) else None


def install(settings: Settings) -> None:
    """Install what these settings ask for. Idempotent; cheap after the first call."""
    if settings.posthog_enabled and "posthog" not in _registry:
        register("posthog", lambda: _posthog_callback(settings))


def dspy_callbacks(settings: Settings, *own: BaseCallback) -> list[BaseCallback]:
    """The registry's callbacks, then ``own`` (a turn's event callback), without repeats."""
    install(settings)
    result: list[BaseCallback] = []
    for callback in [*installed().values(), *own]:
        if not any(callback is seen for seen in result):
            result.append(callback)
    return result
