"""``build_app``: the Starlette app of PROTOCOL.md around one replica's ``Runtime``."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute

from fleet_rlm.api import diagnostics_routes as diagnostics
from fleet_rlm.api import http_routes as http
from fleet_rlm.api import trace_routes as traces
from fleet_rlm.api.errors import EXCEPTION_HANDLERS
from fleet_rlm.api.runtime import Runtime
from fleet_rlm.api.ws_chat import chat_socket
from fleet_rlm.api.ws_events import events_socket

SESSION = "/api/v1/sessions/{session_id}"


def build_app(runtime: Runtime) -> Starlette:
    routes = [
        Route("/health", http.health, methods=["GET"]),
        Route("/ready", http.ready, methods=["GET"]),
        Route("/api/v1/runtime/status", http.status, methods=["GET"]),
        Route("/api/v1/runtime/tests/lm", diagnostics.test_lm, methods=["POST"]),
        Route("/api/v1/runtime/tests/daytona", diagnostics.test_daytona, methods=["POST"]),
        Route("/api/v1/sessions", http.list_sessions, methods=["GET"]),
        Route(SESSION, http.get_session, methods=["GET"]),
        Route(SESSION, http.delete_session, methods=["DELETE"]),
        Route(f"{SESSION}/documents", http.put_document, methods=["POST"]),
        Route(f"{SESSION}/documents", http.list_documents, methods=["GET"]),
        Route(f"{SESSION}/traces", traces.list_traces, methods=["GET"]),
        Route("/api/v1/traces/feedback", traces.post_feedback, methods=["POST"]),
        WebSocketRoute("/api/v1/ws/execution", chat_socket),
        WebSocketRoute("/api/v1/ws/execution/events", events_socket),
    ]
    app = Starlette(routes=routes, exception_handlers=EXCEPTION_HANDLERS)
    app.state.runtime = runtime
    return app
