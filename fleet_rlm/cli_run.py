"""``fleet-rlm run``: attach documents, ask one question over the chat WebSocket, print
the turn live, its answer, and its MLflow trace as a span tree."""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from websockets.exceptions import ConnectionClosed, InvalidStatus
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


STEP_ICONS = {"llm": "think", "repl": "run", "delegate": "delegate", "tool": "tool", "output": "->"}


def _show_step(step: dict[str, Any]) -> None:
    """A child run's step, indented by its depth (the top level shows as chat events)."""
    depth = step.get("depth", 0)
    if depth == 0 and step.get("type") != "delegate":
        return
    detail = step.get("input", {}).get("code") or step.get("input", {}).get("query")
    if not detail:
        output = step.get("output", {})
        detail = output.get("reasoning") or output.get("stdout") or output.get("error") or ""
        detail = detail or output.get("answer") or output.get("code") or ""
    first = str(detail).strip().splitlines()[0] if str(detail).strip() else ""
    kind = STEP_ICONS.get(step.get("type"), step.get("type"))
    label = kind if step.get("type") == "delegate" else f"{kind} {step.get('label', '')}"
    print(f"  {'    ' * depth}|{depth} {label:<22} {first[:110]}", flush=True)


def _watch_steps(url: str, stop: threading.Event) -> None:
    try:
        with connect(url, max_size=None) as viewer:
            while not stop.is_set():
                try:
                    frame = json.loads(viewer.recv(timeout=0.5))
                except TimeoutError:
                    continue
                if frame.get("type") == "execution_step":
                    _show_step(frame["step"])
                elif frame.get("type") == "execution_completed":
                    return
    except Exception as exc:  # the steps are a bonus; the chat stream is what counts
        print(f"  (execution stream unavailable: {exc})")


def _ws_url(base: str, path: str, token: str | None, **query: str) -> str:
    params = {**query, **({"access_token": token} if token else {})}
    return base.replace("http", "ws", 1) + path + (f"?{urlencode(params)}" if params else "")


def run_question(args: argparse.Namespace) -> int:
    """``fleet-rlm run``; common failures print one line saying what to do, not a traceback."""
    try:
        return _run_question(args)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        print(f"fleet-rlm run: cannot read the document: {exc}", file=sys.stderr)
    except (httpx.ConnectError, ConnectionRefusedError, OSError) as exc:
        print(
            f"fleet-rlm run: no fleet-rlm server answers at {args.url} ({exc});"
            " start one with `fleet-rlm serve` or pass --url",
            file=sys.stderr,
        )
    except (httpx.UnsupportedProtocol, ValueError) as exc:
        print(f"fleet-rlm run: bad --url {args.url!r}: {exc}", file=sys.stderr)
    except InvalidStatus as exc:
        print(
            f"fleet-rlm run: the server refused the WebSocket ({exc}); check --token",
            file=sys.stderr,
        )
    except ConnectionClosed as exc:
        reason = exc.rcvd.reason if exc.rcvd else "no reason given"
        print(
            f"fleet-rlm run: the server closed the connection: {reason}; check --token",
            file=sys.stderr,
        )
    return 1


MLFLOW_WAIT_S = 60.0


def _await_mlflow(client: httpx.Client, status: dict[str, Any]) -> dict[str, Any]:
    """While the server's MLflow is still starting (``pending``), wait a little, so the
    turn is traced; after that, or when it is degraded, go on untraced."""
    deadline = time.monotonic() + MLFLOW_WAIT_S
    if status["mlflow"]["startup_status"] == "pending":
        print("waiting for MLflow to start (the turn is traced once it answers)", flush=True)
    while status["mlflow"]["startup_status"] == "pending" and time.monotonic() < deadline:
        time.sleep(1.0)
        status = client.get("/api/v1/runtime/status").json()
    if status["mlflow"]["startup_status"] != "ready":
        print(f"MLflow: {status['mlflow']['startup_error'] or 'still starting'}; untraced")
    return status


def _run_question(args: argparse.Namespace) -> int:
    session = args.session or f"cli-{uuid.uuid4().hex[:10]}"
    print(f"session: {session}")
    base = args.url.rstrip("/")
    with httpx.Client(base_url=base, headers=_headers(args.token), timeout=60.0) as client:
        for doc in args.doc:
            _attach(client, session, Path(doc))
        answer = client.get("/api/v1/runtime/status")
        if answer.status_code in (401, 403):
            raise SystemExit(f"fleet-rlm run: {answer.json().get('message')} (use --token)")
        status = _await_mlflow(client, answer.json())
        existing = client.get(f"/api/v1/sessions/{session}")
        last_seq = existing.json()["last_seq"] if existing.status_code == 200 else 0
    ws_url = _ws_url(base, "/api/v1/ws/execution", args.token)
    print(f"question: {args.question}")
    final: dict[str, Any] | None = None
    deadline = time.monotonic() + args.timeout
    stop = threading.Event()
    if not args.json:
        steps_url = _ws_url(
            base,
            "/api/v1/ws/execution/events",
            args.token,
            session_id=session,
            after_seq=str(last_seq),
        )
        watcher = threading.Thread(target=_watch_steps, args=(steps_url, stop), daemon=True)
        watcher.start()
    with connect(ws_url, max_size=None) as ws:
        ws.send(json.dumps({"type": "message", "session_id": session, "content": args.question}))
        while time.monotonic() < deadline:
            try:
                frame = json.loads(ws.recv(timeout=max(1.0, deadline - time.monotonic())))
            except TimeoutError:
                break
            print(json.dumps(frame)) if args.json else _show(frame)
            if frame.get("type") == "error" and "data" not in frame:
                return 1
            data = frame.get("data", {})
            if data.get("kind") in TERMINAL:
                final = data
                break
    if not args.json:
        watcher.join(timeout=3.0)  # let the last child steps print before the answer
    stop.set()
    if final is None:
        print(
            f"no answer within {args.timeout:g} s; the turn goes on: rerun with --session {session}"
            " or resume it over the WebSocket"
        )
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
