"""The ``fleet-rlm`` command: ``serve`` the runtime, ``run`` one question against it.

fleet-rlm serve [--host 127.0.0.1] [--port 8000]
fleet-rlm run "QUESTION" [--doc PATH] [--session ID] [--url URL] [--json]
fleet-rlm daytona-smoke --repo URL [--ref REF]
"""

from __future__ import annotations

import argparse
import sys

from fleet_rlm.config import apply_offline_env


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fleet-rlm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="start Ray (if needed), MLflow (local) and the app")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--replicas", type=int, default=1)

    run = sub.add_parser("run", help="ask one question over the WebSocket API")
    run.add_argument("question")
    run.add_argument("--doc", action="append", default=[], help="attach a text file (repeatable)")
    run.add_argument("--session", default=None, help="session id (default: a new one)")
    run.add_argument("--url", default="http://127.0.0.1:8000")
    run.add_argument("--token", default=None, help="bearer token when AUTH_REQUIRED=true")
    run.add_argument("--json", action="store_true", help="print raw frames")
    run.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the turn")

    smoke = sub.add_parser(
        "daytona-smoke", help="check Daytona end to end (create, clone, execute twice, delete)"
    )
    smoke.add_argument("--repo", required=True, help="git URL to clone into the sandbox")
    smoke.add_argument("--ref", default=None, help="branch or commit (default: the remote HEAD)")
    smoke.add_argument("--timeout", type=float, default=60.0, help="seconds per execute")
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_offline_env()
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from fleet_rlm.cli_serve import serve_forever

        return serve_forever(args.host, args.port, args.replicas)
    if args.command == "daytona-smoke":
        from fleet_rlm.sandbox import smoke

        return smoke.main(args.repo, args.ref, args.timeout)
    from fleet_rlm.cli_run import run_question

    return run_question(args)


if __name__ == "__main__":
    sys.exit(main())
