"""What one ingress replica holds: settings, the store, session actors and the hub.

Built once per replica process (``Runtime.start``), shared by every route and socket.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

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

    @classmethod
    def start(cls, settings: Settings) -> Runtime:
        settings.check_safe()
        _private_data_dir(settings)
        store = Store.from_settings(settings)
        store.migrate()
        actors = SessionActors(settings)
        hub = Hub(actors, settings.viewer_queue_frames, store)
        logger.info(
            "runtime up: app_env=%s auth_required=%s database=%s",
            settings.app_env,
            settings.auth_required,
            store,
        )
        return cls(settings, store, actors, hub)
