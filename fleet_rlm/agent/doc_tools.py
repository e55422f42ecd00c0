"""Tools over the documents attached to the session, and only those.

The agent never sees a server path: a document is looked up by its name within the
session's identity tuple. Every tool call is checked against cancellation before and
after it runs; its events are sent by ``turn_events.TurnEventCallback``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from fleet_rlm.runtime.turn import TurnContext

READ_MAX_CHARS = 4000
SEARCH_MAX_HITS = 8


class DocumentTools:
    def __init__(self, ctx: TurnContext) -> None:
        self.ctx = ctx

    def _names(self) -> list[str]:
        return self.ctx.store.document_names(self.ctx.turn.key)

    def catalogue(self) -> str:
        docs = self.ctx.store.list_documents(self.ctx.turn.key, 100, None)
        if not docs:
            return "(no documents attached)"
        return "; ".join(f"{d.name} ({d.chars} characters)" for d in docs)

    def _text(self, name: str) -> tuple[str, str]:
        """The named document's text; with no name and one document, that document."""
        names = self._names()
        if not name and len(names) == 1:
            name = names[0]
        doc = self.ctx.store.get_document(self.ctx.turn.key, name) if name else None
        if doc is None or doc.text is None:
            raise ValueError(f"no document named {name!r}; attached: {names or 'none'}")
        return name, doc.text

    # Small models send stray arguments; the tools take ``**_ignored`` so that such a
    # call still does its work instead of failing argument validation.

    def list_documents(self, **_ignored: Any) -> str:
        """List the names and sizes of the documents attached to this session."""
        return self.catalogue()

    def read_document(
        self, name: str = "", start: int = 0, length: int = 2000, **_ignored: Any
    ) -> str:
        """Read `length` characters (at most 4000) of document `name` from offset `start`."""
        name, text = self._text(name)
        start = max(0, int(start))
        length = max(1, min(int(length), READ_MAX_CHARS))
        piece = text[start : start + length]
        return f"[{name} characters {start}-{start + len(piece)} of {len(text)}]\n{piece}"

    def search_document(self, query: str, name: str = "", **_ignored: Any) -> str:
        """Find the lines of document `name` that contain the words of `query`, with offsets."""
        name, text = self._text(name)
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
            guarded_tool(self.ctx, self.list_documents),
            guarded_tool(self.ctx, self.read_document),
            guarded_tool(self.ctx, self.search_document),
        ]


def guarded_tool(ctx: TurnContext, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` checked against cancellation before and after it runs; events come from
    ``turn_events``, which hooks the tool's DSPy callbacks."""

    @functools.wraps(fn)
    def tool(*args: Any, **kwargs: Any) -> Any:
        ctx.check()
        result = fn(*args, **kwargs)
        ctx.check()
        return result

    return tool
