"""The Ray Serve deployment around the Starlette app, and the builder ``serve run`` uses.

``serve run serve_config.yaml`` imports ``fleet_rlm.serve:build`` (see that file);
``fleet-rlm serve`` calls ``deploy`` from its own driver. Each replica builds its own
``Runtime`` from the environment it was given.
"""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from fleet_rlm.config import Settings, apply_offline_env

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "FleetIngress"


def _bind_replica_grpc_to_loopback() -> None:
    """Serve binds each replica's inter-deployment gRPC server to ``[::]:0`` with no
    setting to change it (ray/serve/_private/replica.py, Ray 2.60). On a single machine
    nothing else needs that port, so keep it on loopback."""
    from ray.serve._private import replica

    original = replica.add_port_to_grpc_server
    if getattr(original, "_fleet_loopback", False):
        return

    def add_port(server: Any, address: str) -> int:
        return original(server, address.replace("[::]", "127.0.0.1"))

    add_port._fleet_loopback = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = add_port


APP_NAME = "fleet-rlm"


@serve.deployment(
    name=DEPLOYMENT_NAME,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=1000,
)
@serve.ingress()
class FleetIngress:
    def __init__(self, settings: Settings | None = None) -> None:
        settings = settings or Settings()
        if settings.loopback_only:
            # Runs before the replica opens its gRPC port (after this constructor).
            _bind_replica_grpc_to_loopback()
        apply_offline_env()
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        from fleet_rlm.api.runtime import Runtime

        self.runtime = Runtime.start(settings)

    def __serve_build_asgi_app__(self) -> Any:
        from fleet_rlm.api.app import build_app

        return build_app(self.runtime)


def build(args: dict[str, str] | None = None) -> Any:
    """Application builder for ``serve run``: reads settings from the environment."""
    apply_offline_env()
    settings = Settings()
    settings.check_safe()
    replicas = int((args or {}).get("num_replicas", 1))
    return FleetIngress.options(num_replicas=replicas).bind(settings)
