"""What one ingress replica holds: settings, the store, session actors and the hub.

Built once per replica process (``Runtime.start``), shared by every route and socket.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from fleet_rlm.config import Settings
from fleet_rlm.runtime.actors import SessionActors
from fleet_rlm.runtime.hub import Hub
from fleet_rlm.store import Store

logger = logging.getLogger(__name__)


def _private_data_dir(settings: Settings) -> None:
    """Keep the data folder (SQLite file, MLflow store) readable by the server's user only;
    local sandboxes run under other uids."""
    path = settings.data_dir
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_uid == os.geteuid():
        path.chmod(0o700)


@dataclass
class Runtime:
    settings: Settings
    store: Store
    actors: SessionActors
    hub: Hub
    # The RuntimeDiagnostics actor (None without Ray, as in unit tests).
    diagnostics: Any = None
    # This replica's own copy of the last probe results (the actor's is the shared one).
    local_probes: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def start(cls, settings: Settings) -> Runtime:
        settings.check_safe()
        _private_data_dir(settings)
        store = Store.from_settings(settings)
        store.migrate()
        actors = SessionActors(settings)
        hub = Hub(actors, settings.viewer_queue_frames, store)
        diagnostics = _start_diagnostics(settings)
        logger.info(
            "runtime up: app_env=%s auth_required=%s database=%s",
            settings.app_env,
            settings.auth_required,
            store,
        )
        return cls(settings, store, actors, hub, diagnostics)


def _start_diagnostics(settings: Settings) -> Any:
    """The diagnostics actor; it starts the local MLflow server in the background."""
    import ray

    if not ray.is_initialized():
        return None
    from fleet_rlm.observability.diagnostics_actor import start_diagnostics

    return start_diagnostics(settings)
