"""Percentiles and the tables the benchmarks print and record in ``bench/RESULTS.md``.

A ``Table`` renders as Markdown, which reads well on a terminal too; ``write_results``
overwrites the results file with the run's tables, the command, the date and a note on
the machine.
"""

from __future__ import annotations

import math
import platform
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")
COMMAND = ".venv/bin/python -m bench.bench_runtime"
MACHINE_NOTE = "2 cores, shared and noisy: compare ratios, not absolute figures"


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty sequence."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.2f}"


def ratio(value: float, baseline: float) -> str:
    if math.isnan(value) or math.isnan(baseline) or baseline <= 0:
        return "n/a"
    return f"{value / baseline:.1f}x"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def markdown(self) -> str:
        widths = [
            max(len(r[i]) for r in [self.header, *self.rows]) for i in range(len(self.header))
        ]

        def line(cells: list[str]) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

        out = [f"## {self.title}", "", line(self.header)]
        out.append("| " + " | ".join("-" * w for w in widths) + " |")
        out += [line(r) for r in self.rows]
        if self.notes:
            out.append("")
            out += [f"- {n}" for n in self.notes]
        return "\n".join(out)


def write_results(tables: list[Table], preamble: list[str]) -> Path:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        "# fleet-rlm runtime benchmarks",
        "",
        f"- Command: `{COMMAND}` (from the repository root; `make bench` runs it)",
        f"- Date: {stamp}",
        f"- Machine: {MACHINE_NOTE}; Python {sys.version.split()[0]}, {platform.platform()}",
        *[f"- {p}" for p in preamble],
        "",
        "Written by the benchmark itself; each run overwrites this file.",
    ]
    body = "\n\n".join(t.markdown() for t in tables)
    RESULTS.write_text("\n".join(head) + "\n\n" + body + "\n", encoding="utf-8")
    return RESULTS


def write_section(
    section: str, command: str, writer: str, tables: list[Table], preamble: list[str]
) -> Path:
    """Replace (or append) one benchmark's ``# section`` of RESULTS.md; the rest stays."""
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else ""
    start = text.find(f"\n{section}\n")
    if start >= 0:
        after = text.find("\n# ", start + len(section) + 2)
        text = text[:start] + (text[after:] if after >= 0 else "")
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    head = [
        section,
        "",
        f"- Command: `{command}` (from the repository root)",
        f"- Date: {stamp}",
        f"- Machine: {MACHINE_NOTE}; Python {sys.version.split()[0]}, {platform.platform()}",
        *[f"- {p}" for p in preamble],
        "",
        f"Written by `{writer}`, which replaces only this section.",
    ]
    body = "\n\n".join(t.markdown() for t in tables)
    RESULTS.write_text(
        text.rstrip("\n") + "\n\n" + "\n".join(head) + "\n\n" + body + "\n", encoding="utf-8"
    )
    return RESULTS
