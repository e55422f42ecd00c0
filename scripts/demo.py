"""``make demo``: start the runtime, ask one real question over a real document, stop.

It runs ``fleet-rlm serve`` (Ray, the Serve app, and MLflow in APP_ENV=local), waits for
its ready line, runs ``fleet-rlm run`` with a licence text this machine ships (larger
than the embedded model's context, so the agent delegates it to a recursive run that
writes Python in a sandbox), prints what that prints (the live events with the nested
delegation, the answer, the trace's span tree), and stops the server it started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PORT = os.environ.get("DEMO_PORT", "8000")
# Larger than the embedded model's context, so the agent delegates it to a recursive run.
DOC = os.environ.get("DEMO_DOC", "/usr/share/common-licenses/GPL-3")
QUESTION = os.environ.get(
    "DEMO_QUESTION",
    "In the GPL-3 licence, what must you provide when you convey object code?",
)
# Keep the demo to a couple of minutes on two cores with the embedded model.
DEMO_ENV = {"AGENT_MAX_ITERS": "2", "RLM_MAX_ITERS": "3"}
READY_TIMEOUT_S = 240


def _echo(stream, ready: threading.Event, log: list[str]) -> None:
    for line in iter(stream.readline, ""):
        log.append(line)
        if line.startswith("fleet-rlm ready at"):
            print(line.rstrip(), flush=True)
            ready.set()


def main() -> int:
    if not Path(DOC).is_file():
        print(f"demo document {DOC} is missing; set DEMO_DOC to a text file", file=sys.stderr)
        return 1
    started = time.monotonic()
    print(f"==> starting fleet-rlm on 127.0.0.1:{PORT} (server log: .data/demo-server.log)")
    Path(ROOT / ".data").mkdir(exist_ok=True)
    server = subprocess.Popen(
        [str(BIN / "fleet-rlm"), "serve", "--host", "127.0.0.1", "--port", PORT],
        cwd=ROOT,
        env={**DEMO_ENV, **os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    ready, log = threading.Event(), []
    threading.Thread(target=_echo, args=(server.stdout, ready, log), daemon=True).start()
    try:
        while not ready.wait(1.0):
            if server.poll() is not None or time.monotonic() - started > READY_TIMEOUT_S:
                print("".join(log[-40:]), file=sys.stderr)
                print("==> the server did not come up; its output is above", file=sys.stderr)
                return 1
        print(f"==> server ready in {time.monotonic() - started:.1f} s; asking: {QUESTION}")
        run = subprocess.run(
            [
                str(BIN / "fleet-rlm"),
                "run",
                QUESTION,
                "--doc",
                DOC,
                "--url",
                f"http://127.0.0.1:{PORT}",
            ],
            cwd=ROOT,
        )
        return run.returncode
    finally:
        print("==> stopping the server")
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        (ROOT / ".data" / "demo-server.log").write_text("".join(log))
        print(f"==> demo finished in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
