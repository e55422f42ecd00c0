"""Tools over the documents attached to the session, and only those.

The agent never sees a server path: a document is looked up by its name within the
session's identity tuple. Every tool call is checked against cancellation first and
reported as ``tool_call`` / ``tool_result`` events and an execution step.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from typing import Any

from fleet_rlm.runtime.frames import truncate
from fleet_rlm.runtime.turn import TurnContext

READ_MAX_CHARS = 4000
SEARCH_MAX_HITS = 8
EVENT_TEXT_LIMIT = 2000


class DocumentTools:
    def __init__(self, ctx: TurnContext) -> None:
        self.ctx = ctx
        self.parent_step: str | None = None

    def _names(self) -> list[str]:
        return self.ctx.store.document_names(self.ctx.turn.key)

    def catalogue(self) -> str:
        docs = self.ctx.store.list_documents(self.ctx.turn.key, 100, None)
        if not docs:
            return "(no documents attached)"
        return "; ".join(f"{d.name} ({d.chars} characters)" for d in docs)

    def _text(self, name: str) -> str:
        doc = self.ctx.store.get_document(self.ctx.turn.key, name)
        if doc is None:
            raise ValueError(f"no document named {name!r}; attached: {self._names() or 'none'}")
        return doc.text

    def list_documents(self) -> str:
        """List the names and sizes of the documents attached to this session."""
        return self.catalogue()

    def read_document(self, name: str, start: int = 0, length: int = 2000) -> str:
        """Read `length` characters (at most 4000) of the document `name` from offset `start`."""
        text = self._text(name)
        start = max(0, int(start))
        length = max(1, min(int(length), READ_MAX_CHARS))
        piece = text[start : start + length]
        return f"[{name} characters {start}-{start + len(piece)} of {len(text)}]\n{piece}"

    def search_document(self, name: str, query: str) -> str:
        """Find lines of document `name` containing the words of `query`; returns offsets."""
        text = self._text(name)
        words = [w for w in re.findall(r"\w+", query.lower()) if len(w) > 2] or [query.lower()]
        hits: list[str] = []
        offset = 0
        for line in text.splitlines(keepends=True):
            lowered = line.lower()
            if any(w in lowered for w in words):
                hits.append(f"@{offset}: {line.strip()}")
                if len(hits) >= SEARCH_MAX_HITS:
                    break
            offset += len(line)
        return "\n".join(hits) if hits else f"no line of {name} mentions {query!r}"

    def tools(self) -> list[Callable[..., str]]:
        return [
            self._wrap(self.list_documents),
            self._wrap(self.read_document),
            self._wrap(self.search_document),
        ]

    def _wrap(self, fn: Callable[..., str]) -> Callable[..., str]:
        ctx = self.ctx
        tools = self

        @functools.wraps(fn)
        def tool(*args: Any, **kwargs: Any) -> str:
            ctx.check()
            name = fn.__name__
            call_args = {"args": list(args), **kwargs} if args else dict(kwargs)
            ctx.emitter.chat("tool_call", name, {"tool": name, "args": call_args})
            try:
                result = fn(*args, **kwargs)
                ok = True
            except Exception as exc:
                result, ok = f"error: {exc}", False
            ctx.check()
            shown = truncate(result, EVENT_TEXT_LIMIT)
            ctx.emitter.chat("tool_result", shown, {"tool": name, "ok": ok})
            ctx.emitter.step(
                "tool",
                name,
                parent_id=tools.parent_step,
                input={"args": json.loads(json.dumps(call_args, default=str))},
                output={"ok": ok, "text": shown},
            )
            if not ok:
                raise ValueError(result)
            return result

        return tool
