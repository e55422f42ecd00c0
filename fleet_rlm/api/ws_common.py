"""What both WebSockets share: the handshake's authentication and a serialized sender."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from fleet_rlm.api.auth import authenticate
from fleet_rlm.errors import AuthError
from fleet_rlm.identity import IDENTITY_FIELDS, Principal

logger = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
BAD_REQUEST = 4400
LAGGING = 4408


async def handshake(ws: WebSocket) -> Principal | None:
    """Authenticate and accept, or refuse with close 1008 before any frame."""
    settings = ws.app.state.runtime.settings
    try:
        if IDENTITY_FIELDS & ws.query_params.keys():
            raise AuthError(
                "workspace_id and user_id come from authentication",
                code="unsupported_identity_fields",
            )
        principal = authenticate(ws, settings, websocket=True)
    except AuthError as exc:
        # Accept, then close with 1008 before any frame: a refused handshake would be a bare
        # HTTP 403, and a client could not tell an expired token from a forged one.
        logger.info("websocket refused: %s", exc.code)
        await ws.accept()
        await ws.close(code=POLICY_VIOLATION, reason=exc.code)
        return None
    await ws.accept()
    return principal


class Sender:
    """Sends JSON frames one at a time; after the peer is gone, sends nothing."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self._lock = asyncio.Lock()
        self.closed = False

    async def send(self, frame: dict[str, Any]) -> bool:
        if self.closed:
            return False
        async with self._lock:
            try:
                await self.ws.send_json(frame)
                return True
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.closed = True
                return False

    async def close(self, code: int, reason: str = "") -> None:
        self.closed = True
        if self.ws.application_state != WebSocketState.DISCONNECTED:
            try:
                await self.ws.close(code=code, reason=reason)
            except (RuntimeError, OSError):
                pass
