"""Settings, read from the environment under the names DESIGN.md gives.

``Settings()`` reads them; ``Settings.check_safe()`` raises ``ConfigError``
when a staging or production server would start with auth off or a default
secret. Every process that runs product code (ingress replicas, session
actors) builds its own ``Settings`` from the same environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic_settings import BaseSettings, SettingsConfigDict

from fleet_rlm.errors import ConfigError

DEFAULT_JWT_SECRET = "fleet-rlm-local-dev-secret"

# Set wherever the product runs: no network look-ups at import, no telemetry.
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
}


def apply_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    app_env: Literal["local", "staging", "production"] = "local"
    auth_required: bool = False
    auth_jwt_secret: str = DEFAULT_JWT_SECRET

    data_dir: Path = Path(".data")
    database_url: str | None = None
    database_required: bool = True

    mlflow_enabled: bool = True
    mlflow_tracking_uri: str = "http://127.0.0.1:5001"
    mlflow_experiment: str = "fleet-rlm"
    mlflow_auto_start: bool = True

    posthog_enabled: bool = False
    posthog_host: str = "https://eu.i.posthog.com"
    posthog_api_key: str | None = None

    sandbox_provider: Literal["local", "daytona"] = "local"
    daytona_api_key: str | None = None
    daytona_api_url: str | None = None
    daytona_target: str | None = None

    dspy_lm_model: str | None = None
    dspy_delegate_lm_model: str | None = None
    dspy_delegate_lm_small_model: str | None = None
    dspy_lm_api_base: str | None = None
    dspy_lm_api_key: str | None = None
    # "scripted" replays a rules file (tests); otherwise configured or embedded.
    dspy_lm_scripted_rules: Path | None = None
    lm_timeout_s: float = 60.0
    # POST /api/v1/runtime/tests/{lm,daytona} answer within this, ok or not.
    runtime_probe_timeout_s: float = 20.0
    local_model_port: int = 20180
    local_model_ctx: int = 8192
    local_model_max_tokens: int = 256

    session_idle_timeout_s: float = 600.0
    session_event_buffer: int = 2000
    message_max_bytes: int = 256 * 1024
    document_max_bytes: int = 20 * 1024 * 1024
    viewer_queue_frames: int = 1000
    agent_max_iters: int = 5
    cancel_grace_s: float = 2.0

    sandbox_dir: Path | None = None  # default: <system temp>/fleet-rlm-sandboxes
    sandbox_max_total: int = 4
    sandbox_warm_min: int = 1
    sandbox_exec_timeout_s: float = 30.0
    sandbox_cpu_s: int = 60
    sandbox_memory_mb: int = 512
    sandbox_file_mb: int = 16
    sandbox_max_procs: int = 64
    sandbox_output_bytes: int = 64 * 1024
    sandbox_lease_timeout_s: float = 60.0
    sandbox_idle_reap_s: float = 300.0

    # A question about a document larger than this is delegated before planning (0: never).
    delegate_threshold_chars: int = 24_000
    rlm_max_depth: int = 2
    rlm_max_lm_calls: int = 50
    rlm_wall_time_s: float = 300.0
    rlm_max_concurrent_children: int = 4
    rlm_max_iters: int = 6
    event_text_limit: int = 2000

    embedded_model: bool = True  # serve the bundled SmolLM2 when no model is configured
    # Bind Serve's internal replica gRPC port to 127.0.0.1 (multi-node clusters: false).
    loopback_only: bool = True
    ray_namespace: str = "fleet_rlm"

    def model_post_init(self, context: object) -> None:
        from fleet_rlm import secret_values

        secret_values.register(
            self.dspy_lm_api_key,
            self.daytona_api_key,
            self.posthog_api_key,
            self.auth_jwt_secret if self.auth_jwt_secret != DEFAULT_JWT_SECRET else None,
        )

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fleet_rlm.sqlite3').resolve()}"

    @property
    def scripted(self) -> bool:
        return self.dspy_lm_scripted_rules is not None

    def check_safe(self) -> None:
        """Refuse unsafe settings outside ``APP_ENV=local``, naming the setting to change."""
        if self.app_env == "local":
            return
        if not self.auth_required:
            raise ConfigError(
                f"APP_ENV={self.app_env} needs AUTH_REQUIRED=true; set it, or use APP_ENV=local"
            )
        if not self.auth_jwt_secret or self.auth_jwt_secret == DEFAULT_JWT_SECRET:
            raise ConfigError(
                f"APP_ENV={self.app_env} needs AUTH_JWT_SECRET set to a secret of your own"
                " (at least 32 random characters)"
            )
        if len(self.auth_jwt_secret) < 32:
            raise ConfigError("AUTH_JWT_SECRET must be at least 32 characters outside local")
