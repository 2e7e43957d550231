"""Older history on demand (SPEC "Durable state"): when PageUp reaches the
top of the scrollback, the client asks the server for the room's messages
before the oldest it has shown, and puts them above everything else.

Owns, for the room the user is in: the id of the oldest chat or emote
shown, the request in flight and the lines it has brought so far, and
whether the server has more.  Sans-IO like the rest of termchat.client.

Wire: ``{"type":"history","before":ID,"limit":N}`` is answered by up to N
``chat``/``emote`` packets with ``"history":true`` (oldest first), then
``{"type":"history","more":BOOL}``.
"""

from __future__ import annotations

from termchat.client.formatting import Line, info
from termchat.wire import protocol as proto

LIMIT = 50            # messages asked for at a time (the server allows 100)
ANSWER_WAIT = 10.0    # seconds: no end marker by then, a new PageUp may ask again


class OlderHistory:
    """History on demand for the current room."""

    def __init__(self) -> None:
        self.unsupported = False   # the server refused a request: ask no more
        self.reset()

    def reset(self) -> None:
        """Another room (or the same, joined afresh): nothing known of it."""
        self.oldest: str | None = None
        self.asked_at: float | None = None
        self.lines: list[Line] = []
        self.complete = False      # the server said there is no more

    @property
    def collecting(self) -> bool:
        return self.asked_at is not None

    def saw(self, packet_id: str) -> None:
        """A chat or emote of this room was shown (the first is the oldest)."""
        if self.oldest is None:
            self.oldest = packet_id

    def request(self, newest: str | None, now: float) -> proto.HistoryRequest | None:
        """PageUp at the top: what to ask for, if anything."""
        if self.unsupported or self.complete:
            return None
        if self.collecting and now - self.asked_at < ANSWER_WAIT:
            return None
        before = self.oldest or newest
        if before is None:
            return None
        self.asked_at, self.lines = now, []
        return proto.HistoryRequest(before, LIMIT)

    def add(self, line: Line, packet_id: str | None) -> None:
        """A line of the answer (oldest first)."""
        if not self.lines and packet_id is not None:
            self.oldest = packet_id
        if len(self.lines) < LIMIT * 2:  # what a server sends beyond that is not kept
            self.lines.append(line)

    def end(self, more: bool, room: str) -> list[Line]:
        """The end marker: the lines to put above everything shown."""
        if not self.collecting:
            return []
        lines, self.lines, self.asked_at = self.lines, [], None
        if not more:
            self.complete = True
            lines.insert(0, info(f"the history of {room} starts here"))
        return lines

    def refused(self) -> None:
        """The server did not understand the request: it keeps no history."""
        self.unsupported = True
        self.asked_at, self.lines = None, []
