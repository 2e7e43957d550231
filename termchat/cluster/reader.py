"""The cluster link's reader thread: it reads the event stream from Redis
and hands each event over to the event loop, in stream order.

It owns where it is in the stream (``cursor``, and at start how much of
the stream's past it is catching up on), how many bytes of the stream it
has seen (past STREAM_BYTES it asks the writer, through ``trim_to``, to
trim), and which nodes it knows were members lately.  Everything else it
reaches through its link (termchat/cluster/link.py): the connection, keys,
the hand-over to the loop, and the writer's view of registered and dead
nodes."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from termchat.cluster.events import (Progress, entry_end, event_positions, parse_node_event,
                                     stamp_of, stream_id, unpack)
from termchat.wire import protocol as proto

MAX_BACKOFF = 2.0           # seconds between reconnection attempts, at most...
BACKOFF_BEATS = 4           # ...and at most this many heartbeats (a fast-beating cluster
                            # reconnects as fast: tests run with 0.2 s beats)
STREAM_MAXLEN = 100_000     # events kept in the stream (approximately)...
STREAM_SECONDS = 600        # ...for at most this long...
STREAM_BYTES = 256 << 20    # ...and at most this many bytes of them
MEMBERS_KEPT = 10_000       # nodes the reader remembers as members (then it asks again)
READ_COUNT = 1000           # events taken per XREAD


def longest_backoff(heartbeat: float) -> float:
    """The longest wait between two attempts to reach Redis."""
    return min(MAX_BACKOFF, BACKOFF_BEATS * heartbeat)


class StreamReader:
    """Reads the stream for one link; its state is the reader thread's."""

    def __init__(self, link: Any, history_seconds: float) -> None:
        self.link = link
        self.cursor: str | None = None     # the last stream ID read
        self.restart_reading = False       # Redis lost its data (the writer says): from 0
        self.history_ms = int(history_seconds * 1000)  # the stream's past read at start
        self.catch_up_end: tuple[int, int] | None = None  # ...up to here
        self.sizes: deque[tuple[str, int]] = deque()  # stream entries read and their sizes
        self.stream_bytes = 0              # ...together
        self.trim_to: str | None = None    # too many bytes: the writer trims to here
        self.members: set[str] = set()     # other nodes whose member key we saw

    def run(self) -> None:
        """The reader thread: read the stream from where we were, for ever."""
        link = self.link
        backoff = 0.1
        while link.running:
            try:
                client = link.connect()
                self._start_reading(client)
                backoff = 0.1
                while link.running:
                    if self.restart_reading:
                        self.restart_reading = False
                        self.cursor = "0-0"
                    entries = client.xread({self.link.key("stream"): self.cursor},
                                           count=READ_COUNT, block=500)
                    for _, items in entries or ():
                        self._receive(client, [(entry_id.decode(), fields.get(b"e", b""))
                                               for entry_id, fields in items])
                        self.cursor = items[-1][0].decode()
                client.close()
            except Exception as exc:
                link.log_unexpected(exc)
                link.went_down(str(exc))
                time.sleep(backoff)
                backoff = min(link.max_backoff, backoff * 2)

    def _start_reading(self, client) -> None:
        """Where to read from.  The first time: the stream's recent past
        (HISTORY_SECONDS by Redis's clock), so that this node can replay
        what the sessions of a node that died (or the node this one
        replaces) missed; the core holds new hellos until that is read.
        After a reconnection, where we were, unless that is past the end of
        the stream (Redis lost its data): then from its start."""
        last = client.xrevrange(self.link.key("stream"), count=1)
        end = last[0][0].decode() if last else "0-0"
        catching_up = False
        if self.cursor is None:
            past = stream_id(end)[0] - self.history_ms
            self.cursor = f"{max(0, past)}-0" if end != "0-0" else end
            catching_up = stream_id(self.cursor) < stream_id(end)
            self.catch_up_end = stream_id(end) if catching_up else None
        elif stream_id(self.cursor) > stream_id(end):
            self.cursor = "0-0"
        self.link.hand_over(Progress(entry_end(self.cursor), start=True,
                                     catching_up=catching_up, caught_up=not catching_up))

    def _receive(self, client, batch: list[tuple[str, bytes]]) -> None:
        """A batch of stream entries (ID, what it holds): their events parsed
        and handed over in order, each at its own position (the core vets
        them), then how far the stream has been read, all with one wake-up
        of the loop."""
        own: list[tuple[int, str]] = []
        ready: list = []
        for entry_id, data in batch:
            self.count_bytes(entry_id, len(data))
            past = self.catch_up_end is not None and stream_id(entry_id) <= self.catch_up_end
            for item, position in zip(unpack(data), event_positions(entry_id)):
                self._take(client, item, position, past, own, ready)
        if batch:
            last = stream_id(batch[-1][0])
            caught_up = self.catch_up_end is not None and last >= self.catch_up_end
            if caught_up:
                self.catch_up_end = None
            ready.append(Progress(entry_end(batch[-1][0]), tuple(own), caught_up=caught_up))
            self.link.hand_over(*ready)

    def _take(self, client, data: bytes, position: str, past: bool,
              own: list[tuple[int, str]], ready: list) -> None:
        """One event at ``position``: ours (where it landed goes in ``own``),
        another member's (into ``ready``), or ignored (``past``: read from
        the stream's past at start, when its node may have died since)."""
        stamp = stamp_of(data)
        if stamp is not None and stamp.node == self.link.node_id:
            own.append((stamp.seq, position))  # ours: only where it landed matters
            return
        try:
            event = parse_node_event(data, position)
        except proto.ProtocolError as exc:
            self.link.log_once("ignoring a malformed event", str(exc)[:200])
            return
        if not past and not self._from_a_member(client, event.node):  # (the past holds
            self.link.log_once("ignoring events from an unregistered node", event.node[:40])
            return  # the events of nodes that died since: those are what it is read for)
        self.link.watch.watched.add(event.node)
        ready.append(event)

    def count_bytes(self, entry_id: str, size: int) -> None:
        """Keep the stream's bytes (as read here) under STREAM_BYTES: past
        it, the beat trims the stream's oldest entries."""
        sizes = self.sizes
        sizes.append((entry_id, size))
        self.stream_bytes += size
        oldest_kept = stream_id(entry_id)[0] - STREAM_SECONDS * 1000  # gone from Redis too
        while sizes and (len(sizes) > STREAM_MAXLEN or stream_id(sizes[0][0])[0] < oldest_kept):
            self.stream_bytes -= sizes.popleft()[1]
        while self.stream_bytes > STREAM_BYTES and sizes:
            oldest, dropped = sizes.popleft()
            self.stream_bytes -= dropped
            self.trim_to = oldest

    def _from_a_member(self, client, node: str) -> bool:
        """A node of the cluster, now or lately: one that stopped, or that
        another node took for dead, may still have events of its last
        moments in the stream, read late (never judged by whether it is
        registered when they are read)."""
        link = self.link
        if link.watch.a_member(node) or node in self.members:
            return True
        if client.exists(link.key("member:" + node)):
            if len(self.members) >= MEMBERS_KEPT:
                self.members.clear()
            self.members.add(node)
            return True
        return False
