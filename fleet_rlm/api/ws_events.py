"""``/api/v1/ws/execution/events?session_id=...[&after_seq=N]``: the read-only viewer stream.

Without ``after_seq`` a viewer gets the session's whole execution history, then live
frames. A viewer that falls behind is sent ``viewer_lagging`` and closed (code 4408).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from fleet_rlm.api.ws_common import BAD_REQUEST, LAGGING, Sender, handshake
from fleet_rlm.errors import FleetError
from fleet_rlm.runtime.frames import EXECUTION
from fleet_rlm.runtime.hub import ViewerLagging

logger = logging.getLogger(__name__)


def _after_seq(raw: str | None) -> int:
    if raw is None:
        return 0
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise FleetError("after_seq must be a non-negative integer", code="invalid_field")
    return int(raw)


async def _drain_client(ws: WebSocket) -> None:
    """Read (and ignore) until the client goes away: this stream is read-only."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass


async def events_socket(ws: WebSocket) -> None:
    principal = await handshake(ws)
    if principal is None:
        return
    sender = Sender(ws)
    rt = ws.app.state.runtime
    try:
        key = principal.session(ws.query_params.get("session_id", ""))
        after_seq = _after_seq(ws.query_params.get("after_seq"))
    except FleetError as exc:
        await sender.send({"type": "error", "code": exc.code, "message": exc.message})
        await sender.close(BAD_REQUEST, exc.code)
        return
    sub = await rt.hub.subscribe(key, after_seq, EXECUTION)
    reader = asyncio.get_running_loop().create_task(_drain_client(ws))
    pump = asyncio.get_running_loop().create_task(_pump(sender, sub))
    try:
        await asyncio.wait({reader, pump}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        reader.cancel()
        pump.cancel()
        sub.close()
    if not pump.cancelled() and pump.done() and pump.result() == "lagging":
        await sender.close(LAGGING, "viewer_lagging")


async def _pump(sender: Sender, sub) -> str:
    try:
        async for entry in sub.entries():
            if not await sender.send(entry["frame"]):
                return "gone"
    except ViewerLagging:
        await sender.send(
            {
                "type": "error",
                "code": "viewer_lagging",
                "message": "this viewer fell behind; reconnect with after_seq=<last seq seen>",
            }
        )
        return "lagging"
    except Exception as exc:
        logger.warning("session %s: viewer stream failed: %r", sub.feed.key.session_id, exc)
        await sender.send(
            {
                "type": "error",
                "code": "session_unavailable",
                "message": "the session's stream broke; reconnect with after_seq=<last seq seen>",
            }
        )
        return "lagging"
    return "gone"
