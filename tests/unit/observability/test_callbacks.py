"""The DSPy callback registry: each callback once, however often a process installs."""

from __future__ import annotations

import dspy
from dspy.utils.callback import BaseCallback
from mlflow.dspy.callback import MlflowCallback

from fleet_rlm.config import Settings
from fleet_rlm.observability import callbacks


class Own(BaseCallback):
    pass


def test_mlflow_callback_is_installed_once() -> None:
    for _ in range(3):
        callbacks.install_mlflow()
    settings = Settings(posthog_enabled=False)
    own = Own()
    chosen = callbacks.dspy_callbacks(settings, own, own)
    assert sum(isinstance(c, MlflowCallback) for c in chosen) == 1
    assert chosen[-1] is own and chosen.count(own) == 1
    assert sum(isinstance(c, MlflowCallback) for c in dspy.settings.callbacks) <= 1


def test_the_registry_is_seen_from_another_thread() -> None:
    import threading

    callbacks.install_mlflow()
    seen: list[list[BaseCallback]] = []
    worker = threading.Thread(target=lambda: seen.append(callbacks.dspy_callbacks(Settings())))
    worker.start()
    worker.join()
    assert [type(c) for c in seen[0]] == [type(c) for c in callbacks.installed().values()]


def test_posthog_is_not_installed_when_disabled() -> None:
    callbacks.dspy_callbacks(Settings(posthog_enabled=False))
    assert "posthog" not in callbacks.installed()
