"""``/api/v1/ws/execution``: the bidirectional chat stream of PROTOCOL.md.

One socket may talk to several sessions of its caller. Per session it holds one
subscription (made on the first ``message`` or ``resume``) whose frames a pump task
forwards. A turn runs in the session actor, so a dropped socket loses nothing: the
client reconnects and sends ``resume`` with the last ``seq`` it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect

from fleet_rlm.api.client_frames import ClientFrame, FrameError, parse_client_frame
from fleet_rlm.api.runtime import Runtime
from fleet_rlm.api.ws_common import Sender, handshake
from fleet_rlm.errors import FleetError
from fleet_rlm.identity import Principal, SessionKey
from fleet_rlm.runtime.frames import CHAT
from fleet_rlm.runtime.hub import Subscription, ViewerLagging

logger = logging.getLogger(__name__)


class ChatConnection:
    def __init__(self, ws: WebSocket, rt: Runtime, principal: Principal) -> None:
        self.ws = ws
        self.rt = rt
        self.principal = principal
        self.sender = Sender(ws)
        self.pumps: dict[str, tuple[Subscription, asyncio.Task[None]]] = {}

    async def run(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    return
                text = message.get("text")
                if text is None and message.get("bytes") is not None:
                    text = None
                await self.handle(text)
        except WebSocketDisconnect:
            return
        finally:
            for session_id in list(self.pumps):
                self.unsubscribe(session_id)

    async def handle(self, text: str | None) -> None:
        try:
            frame = parse_client_frame(text, self.rt.settings.message_max_bytes)
            await self.dispatch(frame)
        except FrameError as exc:
            logger.debug("chat socket: bad frame %s", exc.code)
            await self.sender.send(exc.frame())
        except FleetError as exc:
            await self.sender.send({"type": "error", "code": exc.code, "message": exc.message})

    async def dispatch(self, frame: ClientFrame) -> None:
        if frame.type == "ping":
            await self.sender.send({"type": "pong"})
            return
        assert frame.session_id is not None
        key = self.principal.session(frame.session_id)
        if frame.type == "resume":
            await self.subscribe(key, frame.after_seq)
        elif frame.type == "message":
            # The message creates the session's record, so the feed has an actor to follow.
            await asyncio.to_thread(self.rt.store.ensure_session, key)
            if frame.session_id not in self.pumps:
                await self.subscribe(key, None)
            answer = await self.rt.actors.call(
                key, "start_turn", frame.content, frame.client_message_id
            )
            if not answer["ok"]:
                await self.refuse(key, answer)
        elif frame.type == "cancel":
            if await asyncio.to_thread(self.rt.store.get_session, key) is None:
                await self.refuse(
                    key,
                    {"code": "no_turn_running", "message": "no turn is running in this session"},
                )
                return
            answer = await self.rt.actors.call(key, "cancel")
            if not answer["ok"]:
                await self.refuse(key, answer)
                return
            await self.sender.send(
                {
                    "type": "command_result",
                    "command": "cancel",
                    "session_id": key.session_id,
                    "result": {"status": "ok", "turn_index": answer["turn_index"]},
                }
            )

    async def refuse(self, key: SessionKey, answer: dict) -> None:
        await self.sender.send(
            {
                "type": "error",
                "code": answer["code"],
                "message": answer["message"],
                "session_id": key.session_id,
            }
        )

    async def subscribe(self, key: SessionKey, after_seq: int | None) -> None:
        self.unsubscribe(key.session_id)
        sub = await self.rt.hub.subscribe(key, after_seq, CHAT)
        task = asyncio.get_running_loop().create_task(self.pump(key, sub))
        self.pumps[key.session_id] = (sub, task)

    def unsubscribe(self, session_id: str) -> None:
        entry = self.pumps.pop(session_id, None)
        if entry is None:
            return
        sub, task = entry
        sub.close()
        task.cancel()

    async def pump(self, key: SessionKey, sub: Subscription) -> None:
        try:
            async for entry in sub.entries():
                if not await self.sender.send(entry["frame"]):
                    return
        except ViewerLagging:
            await self.sender.send(
                {
                    "type": "error",
                    "code": "viewer_lagging",
                    "message": "this socket fell behind; send resume with the last seq you saw",
                    "session_id": key.session_id,
                }
            )
        except asyncio.CancelledError:
            raise
        except FleetError as exc:  # the session was deleted, or could not be reached
            await self.sender.send(
                {
                    "type": "error",
                    "code": exc.code,
                    "message": exc.message,
                    "session_id": key.session_id,
                }
            )
        except Exception as exc:
            logger.warning("session %s: chat stream failed: %r", key.session_id, exc)
            await self.sender.send(
                {
                    "type": "error",
                    "code": "session_unavailable",
                    "message": "the session's stream broke; send resume with the last seq you saw",
                    "session_id": key.session_id,
                }
            )
        finally:
            sub.close()
            current = self.pumps.get(key.session_id)
            if current is not None and current[0] is sub:
                del self.pumps[key.session_id]


async def chat_socket(ws: WebSocket) -> None:
    principal = await handshake(ws)
    if principal is None:
        return
    conn = ChatConnection(ws, ws.app.state.runtime, principal)
    with contextlib.suppress(WebSocketDisconnect):
        await conn.run()
