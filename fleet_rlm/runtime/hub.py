"""Replica-side fan-out: one subscription per session per replica, many local sockets.

A ``Feed`` long-polls its session actor (``wait_events``) and hands every entry to the
``Subscription`` of each local socket. A subscription first replays what its socket
missed (``read_events`` from the actor, which reads the store for old entries) and then
streams live entries, skipping any ``seq`` it already sent, so a (re)attach neither loses
nor duplicates a frame. A subscription whose queue fills up is marked lagging and gets
no more entries; its socket tells the client and closes, and the client resumes with
``after_seq``. A feed stops once its last subscription leaves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import ray

from fleet_rlm.identity import SessionKey
from fleet_rlm.runtime.actors import SessionActors
from fleet_rlm.store import Store

logger = logging.getLogger(__name__)

POLL_TIMEOUT_S = 10.0
DORMANT_POLL_S = 0.5
Entry = dict[str, Any]


class ViewerLagging(Exception):
    """The subscription's queue overflowed; the client must resume with ``after_seq``."""


class Subscription:
    def __init__(self, feed: Feed, after_seq: int, channel: str | None, maxsize: int) -> None:
        self.feed = feed
        self.after_seq = after_seq
        self.channel = channel
        self.last_sent = after_seq
        self.lagging = False
        self._maxsize = maxsize
        self._queue: asyncio.Queue[Entry | Exception] = asyncio.Queue()

    def offer(self, entry: Entry) -> None:
        if self.lagging:
            return
        if self._queue.qsize() >= self._maxsize:
            self.lagging = True
            self._queue.put_nowait(ViewerLagging())
            return
        self._queue.put_nowait(entry)

    def fail(self, exc: Exception) -> None:
        self.lagging = True
        self._queue.put_nowait(exc)

    def close(self) -> None:
        self.feed.detach(self)

    async def _replay(self) -> AsyncIterator[Entry]:
        cursor = self.after_seq
        if not self.feed.hub.has_record(self.feed.key):
            return  # nothing was ever said in it, and no actor is started to say so
        while True:
            answer = await self.feed.actors.call(self.feed.key, "read_events", cursor)
            entries = answer.get("entries", [])
            if not entries:
                return
            for entry in entries:
                yield entry
            cursor = entries[-1]["seq"]

    async def entries(self) -> AsyncIterator[Entry]:
        """Every entry after ``after_seq`` of this subscription's channel, in order."""
        async for entry in self._replay():
            if self._fresh(entry):
                yield entry
        while True:
            entry = await self._queue.get()
            if isinstance(entry, Exception):
                raise entry
            if self._fresh(entry):
                yield entry

    def _fresh(self, entry: Entry) -> bool:
        if entry["seq"] <= self.last_sent:
            return False
        self.last_sent = entry["seq"]
        return self.channel is None or entry["channel"] == self.channel


class Feed:
    def __init__(self, hub: Hub, key: SessionKey, cursor: int) -> None:
        self.hub = hub
        self.key = key
        self.actors = hub.actors
        self.cursor = cursor
        self.subs: set[Subscription] = set()
        self.inflight: list[object] = []
        self.task = asyncio.get_running_loop().create_task(self._poll())

    def detach(self, sub: Subscription) -> None:
        self.subs.discard(sub)
        if not self.subs:
            self.hub.drop(self)

    async def _dormant(self) -> bool:
        """Until the session has a record (a message or a document made it), wait without
        an actor: watching or resuming an unused id must not start a process. False when
        the last subscriber left first."""
        while not self.hub.has_record(self.key):
            if not self.subs:
                return False
            await asyncio.sleep(DORMANT_POLL_S)
        return True

    async def _poll(self) -> None:
        logger.info("session %s: feed started at seq %d", self.key, self.cursor)
        try:
            if not await self._dormant():
                return
            while True:
                answer = await self.actors.call(
                    self.key, "wait_events", self.cursor, POLL_TIMEOUT_S, inflight=self.inflight
                )
                for entry in answer.get("entries", []):
                    self.cursor = max(self.cursor, entry["seq"])
                    for sub in list(self.subs):
                        sub.offer(entry)
                if not self.subs:
                    return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.exception("session %s: feed failed; viewers will be closed", self.key)
            for sub in list(self.subs):
                sub.fail(exc)
        finally:
            logger.info("session %s: feed stopped at seq %d", self.key, self.cursor)


class Hub:
    """One per replica process: the feeds of the sessions its sockets watch."""

    def __init__(self, actors: SessionActors, queue_frames: int, store: Store) -> None:
        self.actors = actors
        self.queue_frames = queue_frames
        self.store = store
        self._feeds: dict[SessionKey, Feed] = {}
        self._locks: dict[SessionKey, asyncio.Lock] = {}

    async def subscribe(
        self, key: SessionKey, after_seq: int | None, channel: str | None
    ) -> Subscription:
        """Attach to ``key``'s feed. ``after_seq=None`` means: from now on."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            feed = self._feeds.get(key)
            if feed is None or feed.task.done():
                last = await self._last_seq(key)
                feed = Feed(self, key, last)
                self._feeds[key] = feed
                start = last if after_seq is None else min(after_seq, last)
            elif after_seq is None:
                start = await self._last_seq(key)
            else:
                start = after_seq
            if after_seq is not None and after_seq > feed.cursor:
                # Past the end (a stale or invented seq): from the end, not never.
                start = min(after_seq, await self._last_seq(key))
            sub = Subscription(feed, start, channel, self.queue_frames)
            feed.subs.add(sub)
        return sub

    def has_record(self, key: SessionKey) -> bool:
        return self.store.get_session(key) is not None

    async def _last_seq(self, key: SessionKey) -> int:
        if not self.has_record(key):
            return 0
        return (await self.actors.call(key, "snapshot"))["last_seq"]

    def end_session(self, key: SessionKey, reason: Exception) -> None:
        """The session was deleted: fail its subscribers here and forget its feed."""
        feed = self._feeds.get(key)
        if feed is None:
            return
        for sub in list(feed.subs):
            sub.fail(reason)
        self.drop(feed)

    def drop(self, feed: Feed) -> None:
        if self._feeds.get(feed.key) is feed:
            del self._feeds[feed.key]
        feed.task.cancel()
        for ref in feed.inflight:
            # Ends the actor's long-poll now, so an idle session can passivate on time.
            ray.cancel(ref)

    @property
    def feed_count(self) -> int:
        return len(self._feeds)
