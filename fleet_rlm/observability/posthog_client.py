"""The process's PostHog client: made once per host and key, never waited on.

Events go to the client's own bounded background queue (never ``sync_mode``): a dead or
hanging host only fills that queue, and events that do not fit are dropped. Failures are
logged at WARNING once per kind and process (``warn_once``), then at DEBUG. ``shutdown``
flushes within a bound at exit. What the events say is ``analytics``.
"""

from __future__ import annotations

import atexit
import logging
import threading
from typing import TYPE_CHECKING, Any

from fleet_rlm.config import Settings
from fleet_rlm.identity import SessionKey

if TYPE_CHECKING:
    from posthog import Posthog

logger = logging.getLogger(__name__)

MAX_QUEUE_EVENTS = 1000  # per process; beyond it events are dropped, never waited for
FLUSH_INTERVAL_S = 1.0  # a partial batch goes out after this (session actors passivate)
UPLOAD_TIMEOUT_S = 5.0
UPLOAD_RETRIES = 1
SHUTDOWN_TIMEOUT_S = 3.0

_clients_lock = threading.Lock()
_clients: dict[tuple[str, str], Posthog] = {}
_atexit_registered = False
_warned_lock = threading.Lock()
_warned: set[str] = set()


def warn_once(kind: str, message: str, *args: object) -> None:
    """WARNING the first time a kind of failure happens in this process, DEBUG after."""
    with _warned_lock:
        first = kind not in _warned
        _warned.add(kind)
    logger.log(logging.WARNING if first else logging.DEBUG, message, *args)


def _client(settings: Settings) -> Posthog:
    global _atexit_registered
    host, api_key = settings.posthog_host, (settings.posthog_api_key or "").strip()
    with _clients_lock:
        client = _clients.get((host, api_key))
        if client is not None:
            return client
        from posthog import Posthog

        # The SDK logs every failed upload at ERROR; ``_on_upload_error`` reports it once.
        sdk_logger = logging.getLogger("posthog")
        if sdk_logger.level == logging.NOTSET:
            sdk_logger.setLevel(logging.CRITICAL)
        client = Posthog(
            api_key,
            host=host,
            sync_mode=False,
            max_queue_size=MAX_QUEUE_EVENTS,
            flush_interval=FLUSH_INTERVAL_S,
            gzip=True,
            timeout=UPLOAD_TIMEOUT_S,
            max_retries=UPLOAD_RETRIES,
            thread=1,
            on_error=lambda exc, batch: _on_upload_error(host, exc, batch),
            capture_mode="v0",  # POST /batch/, whatever POSTHOG_CAPTURE_MODE says
            disable_geoip=True,
            enable_local_evaluation=False,  # no feature-flag polling, no /flags
            enable_exception_autocapture=False,
        )
        _clients[(host, api_key)] = client
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
    logger.info(
        "PostHog analytics on: events go to %s (queue of %d, sent every %.0f s)",
        host,
        MAX_QUEUE_EVENTS,
        FLUSH_INTERVAL_S,
    )
    return client


def _on_upload_error(host: str, exc: Exception, batch: list[dict[str, Any]]) -> None:
    warn_once(
        "upload",
        "PostHog: %d analytics events could not be sent to %s (%s) and are dropped; check"
        " POSTHOG_HOST and POSTHOG_API_KEY, or set POSTHOG_ENABLED=false",
        len(batch),
        host,
        exc,
    )


def send(
    settings: Settings,
    key: SessionKey,
    event: str,
    properties: dict[str, Any],
) -> None:
    """Queue one event; never raises, never waits on the network."""
    try:
        queued = _client(settings).capture(event, distinct_id=key.user_id, properties=properties)
    except Exception as exc:
        warn_once(
            "capture",
            "session %s: PostHog event %s not captured (%r); analytics go on without it",
            key,
            event,
            exc,
        )
        return
    if queued is None:
        warn_once(
            "dropped",
            "session %s: PostHog event %s dropped: the queue of %d events is full (is %s"
            " answering?) or the client is shut down",
            key,
            event,
            MAX_QUEUE_EVENTS,
            settings.posthog_host,
        )
    elif logger.isEnabledFor(logging.DEBUG):
        logger.debug("session %s: PostHog event %s queued", key, event)


def flush(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Wait up to ``timeout_s`` (per client) for queued events to be sent or given up."""
    with _clients_lock:
        clients = list(_clients.values())
    for client in clients:
        try:
            client.flush(timeout_seconds=timeout_s)
        except Exception as exc:
            warn_once("flush", "PostHog: flush failed (%r)", exc)


def shutdown(timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
    """Flush and stop this process's clients, waiting at most ``timeout_s`` in all.

    The SDK's own shutdown drains without a time limit, so it runs on a daemon thread:
    a hanging host costs this call ``timeout_s`` and cannot hold the process open.
    """
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    if not clients:
        return

    def stop() -> None:
        for client in clients:
            try:
                client.flush(timeout_seconds=timeout_s)
                client.shutdown()
            except Exception as exc:
                warn_once("shutdown", "PostHog: shutdown failed (%r)", exc)

    worker = threading.Thread(target=stop, name="posthog-shutdown", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        warn_once(
            "shutdown",
            "PostHog: queued events not sent within %.0f s; leaving them behind",
            timeout_s,
        )
