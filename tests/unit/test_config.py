"""``Settings``: the environment names DESIGN.md gives, and ``check_safe`` outside local."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from fleet_rlm.config import DEFAULT_JWT_SECRET, Settings
from fleet_rlm.errors import ConfigError

GOOD_SECRET = "s" * 32


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from an environment with none of the settings set."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)


# --- environment names ---------------------------------------------------------------


ENV_CASES = [
    ("APP_ENV", "staging", "app_env", "staging"),
    ("APP_ENV", "production", "app_env", "production"),
    ("AUTH_REQUIRED", "true", "auth_required", True),
    ("AUTH_JWT_SECRET", "my-secret", "auth_jwt_secret", "my-secret"),
    ("DATABASE_URL", "postgresql+psycopg://u@127.0.0.1/db", "database_url", None),
    ("DATABASE_REQUIRED", "false", "database_required", False),
    ("MLFLOW_ENABLED", "false", "mlflow_enabled", False),
    ("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999", "mlflow_tracking_uri", None),
    ("MLFLOW_EXPERIMENT", "exp-2", "mlflow_experiment", None),
    ("MLFLOW_AUTO_START", "false", "mlflow_auto_start", False),
    ("POSTHOG_ENABLED", "true", "posthog_enabled", True),
    ("POSTHOG_HOST", "https://posthog.invalid", "posthog_host", None),
    ("POSTHOG_API_KEY", "phc_test", "posthog_api_key", None),
    ("SANDBOX_PROVIDER", "daytona", "sandbox_provider", "daytona"),
    ("DAYTONA_API_KEY", "dtn-key", "daytona_api_key", None),
    ("DAYTONA_API_URL", "http://127.0.0.1:3986/api", "daytona_api_url", None),
    ("DAYTONA_TARGET", "eu", "daytona_target", None),
    ("DSPY_LM_MODEL", "openai/gpt-x", "dspy_lm_model", None),
    ("DSPY_DELEGATE_LM_MODEL", "openai/gpt-y", "dspy_delegate_lm_model", None),
    ("DSPY_DELEGATE_LM_SMALL_MODEL", "openai/gpt-z", "dspy_delegate_lm_small_model", None),
    ("DSPY_LM_API_BASE", "http://127.0.0.1:8000/v1", "dspy_lm_api_base", None),
    ("DSPY_LM_API_KEY", "key-123", "dspy_lm_api_key", None),
]


@pytest.mark.parametrize(
    ("env", "value", "attribute", "expected"),
    ENV_CASES,
    ids=[f"{env}={value}" for env, value, _, _ in ENV_CASES],
)
def test_design_env_name_is_read(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, attribute: str, expected: Any
) -> None:
    monkeypatch.setenv(env, value)
    assert getattr(Settings(), attribute) == (value if expected is None else expected)


def test_env_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("dspy_lm_model", "openai/lower")
    assert Settings().dspy_lm_model == "openai/lower"


def test_defaults_match_design() -> None:
    s = Settings()
    assert (s.app_env, s.auth_required, s.auth_jwt_secret) == ("local", False, DEFAULT_JWT_SECRET)
    assert (s.mlflow_enabled, s.mlflow_tracking_uri, s.mlflow_experiment) == (
        True,
        "http://127.0.0.1:5001",
        "fleet-rlm",
    )
    assert (s.posthog_enabled, s.posthog_host) == (False, "https://eu.i.posthog.com")
    assert s.sandbox_provider == "local"
    assert s.database_url is None and s.database_required is True


def test_protocol_size_defaults() -> None:
    s = Settings()
    assert s.message_max_bytes == 256 * 1024
    assert s.document_max_bytes == 20 * 1024 * 1024


@pytest.mark.parametrize(
    ("env", "value"),
    [("APP_ENV", "dev"), ("SANDBOX_PROVIDER", "docker"), ("AUTH_REQUIRED", "maybe")],
)
def test_values_outside_the_allowed_set_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ValidationError):
        Settings()


def test_database_url_wins_over_the_sqlite_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u@127.0.0.1/db")
    assert Settings().sqlalchemy_url == "postgresql+psycopg://u@127.0.0.1/db"


def test_without_database_url_the_store_is_sqlite_under_data_dir(tmp_path: Path) -> None:
    url = Settings(data_dir=tmp_path).sqlalchemy_url
    assert url == f"sqlite:///{(tmp_path / 'fleet_rlm.sqlite3').resolve()}"


# --- check_safe ----------------------------------------------------------------------

UNSAFE_ENVS = ["staging", "production"]


@pytest.mark.parametrize("app_env", UNSAFE_ENVS)
def test_auth_off_is_refused_outside_local(app_env: str) -> None:
    with pytest.raises(ConfigError, match="AUTH_REQUIRED") as caught:
        Settings(app_env=app_env, auth_required=False, auth_jwt_secret=GOOD_SECRET).check_safe()
    assert caught.value.code == "config_error"


@pytest.mark.parametrize("app_env", UNSAFE_ENVS)
@pytest.mark.parametrize(
    "secret",
    [DEFAULT_JWT_SECRET, "", "s" * 31, "short"],
    ids=["default", "empty", "31-chars", "short"],
)
def test_weak_secret_is_refused_outside_local(app_env: str, secret: str) -> None:
    settings = Settings(app_env=app_env, auth_required=True, auth_jwt_secret=secret)
    with pytest.raises(ConfigError, match="AUTH_JWT_SECRET"):
        settings.check_safe()


@pytest.mark.parametrize("app_env", UNSAFE_ENVS)
def test_auth_off_and_default_secret_names_auth_required_first(app_env: str) -> None:
    with pytest.raises(ConfigError, match="AUTH_REQUIRED"):
        Settings(app_env=app_env).check_safe()


@pytest.mark.parametrize("app_env", UNSAFE_ENVS)
def test_auth_on_with_a_long_secret_is_safe(app_env: str) -> None:
    Settings(app_env=app_env, auth_required=True, auth_jwt_secret=GOOD_SECRET).check_safe()


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"auth_required": True}, {"auth_required": True, "auth_jwt_secret": "x"}],
    ids=["defaults", "auth-on-default-secret", "auth-on-short-secret"],
)
def test_local_is_always_allowed(kwargs: dict[str, Any]) -> None:
    Settings(app_env="local", **kwargs).check_safe()


def test_check_safe_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("AUTH_REQUIRED", "true")
    with pytest.raises(ConfigError, match="AUTH_JWT_SECRET"):
        Settings().check_safe()
    monkeypatch.setenv("AUTH_JWT_SECRET", GOOD_SECRET)
    Settings().check_safe()
