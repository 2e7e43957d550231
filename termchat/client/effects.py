"""What the client's logic asks the program to do: the effects that
termchat.client.core and termchat.client.session return, and that
chat_client.py (which owns the socket, the threads and the terminal)
carries out.  Small frozen values, so tests compare them directly."""

from __future__ import annotations

from dataclasses import dataclass

from termchat.client.formatting import Line
from termchat.wire import protocol as proto


@dataclass(frozen=True)
class Send:
    """Send this packet on the current connection."""
    message: proto.Message


@dataclass(frozen=True)
class Show:
    """Add a line to the output; ``when``: the server's time of the packet
    it shows (None: now)."""
    line: Line
    when: float | None = None


@dataclass(frozen=True)
class ShowOlder:
    """Put lines above everything shown so far (history asked for)."""
    lines: tuple[Line, ...]


@dataclass(frozen=True)
class Ring:
    """Ring the terminal bell."""


@dataclass(frozen=True)
class Hangup:
    """Close the current connection (it never answered)."""


@dataclass(frozen=True)
class Wake:
    """Connect again now (the user typed the password, or /reconnect)."""


@dataclass(frozen=True)
class Leave:
    """The user quits."""


Effect = Send | Show | ShowOlder | Ring | Hangup | Wake | Leave
