"""``fleet-rlm run``: attach documents, ask one question over the chat WebSocket, print
the turn live, its answer, and its MLflow trace as a span tree."""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from fleet_rlm.trace_tree import print_trace_tree

TERMINAL = {"final", "error", "cancelled"}


def _headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _attach(client: httpx.Client, session: str, path: Path) -> None:
    text = path.read_text(errors="replace")
    answer = client.post(
        f"/api/v1/sessions/{session}/documents", json={"name": path.name, "text": text}
    )
    if answer.status_code != 201:
        raise SystemExit(f"attaching {path} failed: {answer.status_code} {answer.text}")
    body = answer.json()
    print(f"attached {body['name']} ({body['chars']} characters) to session {session}")


def _show(frame: dict[str, Any]) -> None:
    if frame.get("type") == "error":
        print(f"  ! {frame.get('code')}: {frame.get('message')}")
        return
    data = frame.get("data", {})
    kind, text, payload = data.get("kind"), data.get("text", ""), data.get("payload", {})
    seq = data.get("seq")
    if kind == "tool_call":
        args = json.dumps(payload.get("args"))
        args = args if len(args) <= 160 else args[:160] + "..."
        print(f"  [{seq}] tool call    {payload.get('tool')}({args})")
    elif kind == "tool_result":
        first = text.splitlines()[0] if text else ""
        print(f"  [{seq}] tool result  {first[:160]}")
    elif kind == "reasoning":
        print(f"  [{seq}] thinking     {text[:300]}")
    elif kind == "final":
        print(f"  [{seq}] final")
    elif kind == "error":
        print(f"  [{seq}] error        {payload.get('code')}: {text}")
    else:
        print(f"  [{seq}] {kind:<12} {text[:200]}")


def run_question(args: argparse.Namespace) -> int:
    session = args.session or f"cli-{uuid.uuid4().hex[:10]}"
    base = args.url.rstrip("/")
    with httpx.Client(base_url=base, headers=_headers(args.token), timeout=60.0) as client:
        for doc in args.doc:
            _attach(client, session, Path(doc))
        status = client.get("/api/v1/runtime/status").json()
    ws_url = base.replace("http", "ws", 1) + "/api/v1/ws/execution"
    if args.token:
        ws_url += f"?access_token={args.token}"
    print(f"question: {args.question}")
    final: dict[str, Any] | None = None
    deadline = time.monotonic() + args.timeout
    with connect(ws_url, max_size=None) as ws:
        ws.send(json.dumps({"type": "message", "session_id": session, "content": args.question}))
        while time.monotonic() < deadline:
            frame = json.loads(ws.recv(timeout=max(1.0, deadline - time.monotonic())))
            print(json.dumps(frame)) if args.json else _show(frame)
            if frame.get("type") == "error" and "data" not in frame:
                return 1
            data = frame.get("data", {})
            if data.get("kind") in TERMINAL:
                final = data
                break
    if final is None:
        print("no answer within the timeout; the turn goes on: resume with the session id")
        return 1
    if final["kind"] != "final":
        return 1
    print(f"\nanswer: {final['payload'].get('answer')}")
    trace_id = final["payload"].get("trace_id")
    if trace_id and status["mlflow"]["startup_status"] == "ready":
        print(
            f"\ntrace {trace_id}"
            + (f"  {final['payload']['trace_url']}" if final["payload"].get("trace_url") else "")
        )
        print_trace_tree(status["mlflow"]["tracking_uri"], trace_id)
    else:
        print("\n(no trace: MLflow is not available)")
    return 0
