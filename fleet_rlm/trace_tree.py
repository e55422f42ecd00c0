"""Print an MLflow trace as an indented span tree (used by ``fleet-rlm run``)."""

from __future__ import annotations

import time
from collections import defaultdict


def fetch_trace(tracking_uri: str, trace_id: str, wait_s: float = 30.0):
    """The trace, once its spans have landed (export is asynchronous)."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            trace = client.get_trace(trace_id)
            if trace is not None and trace.data.spans:
                return trace
        except Exception:  # "not fully exported yet" until the spans land
            if time.monotonic() >= deadline:
                return None
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def print_trace_tree(tracking_uri: str, trace_id: str) -> None:
    trace = fetch_trace(tracking_uri, trace_id)
    if trace is None:
        print("  (the trace's spans have not landed yet; open it in the MLflow UI)")
        return
    children = defaultdict(list)
    for span in trace.data.spans:
        children[span.parent_id].append(span)

    hidden = 0

    def show(parent: str | None, depth: int) -> None:
        nonlocal hidden
        for span in sorted(children.get(parent, []), key=lambda s: s.start_time_ns):
            if span.span_type == "PARSER":  # adapter format/parse: noise in a terminal
                hidden += 1
                continue
            ms = (span.end_time_ns - span.start_time_ns) / 1e6 if span.end_time_ns else 0.0
            print(f"  {'  ' * depth}{span.name}  [{span.span_type or ''}] {ms:.0f} ms")
            show(span.span_id, depth + 1)

    show(None, 0)
    print(f"  {len(trace.data.spans)} spans ({hidden} adapter spans not shown)")
