"""What the core's parts ask to have done, as values.

A handler (of a client's packet, of another node's event, of time passing)
changes the state its own component owns and returns effects for anything
that goes outside it: a packet to send, a chat event to announce (number,
log, broadcast), a connection to close, a call on the cluster link.  Only
the facade (core.py) carries effects out, in the order given, so every
handler reads as "decide, then say what happens".

Where an announced event came from is explicit: an :class:`Announce` that
goes to the cluster carries the link call that publishes it (the facade
stamps the log entry with the sequence number that call returns), and the
facade is told the origin of everything a cluster event or a node's death
leads to.  Nothing is kept in fields between two calls.  Effects are frozen
msgspec Structs: one is made for every chat, and a Struct is made cheaply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Union

import msgspec

if TYPE_CHECKING:
    from termchat.core.gate import Connection
    from termchat.wire.protocol import Message


class LinkCall(msgspec.Struct, frozen=True):
    """A call on the cluster link (a method of :class:`termchat.core.link.Link`);
    calls that publish an event return its sequence number."""
    name: str
    args: tuple = ()


class Move(msgspec.Struct, frozen=True):
    """Who moved from where to where (its name key and the room keys),
    logged with the exit it leads to, so that a replay can follow the mover."""
    mover: str
    old: str
    new: str


class Announce(msgspec.Struct, frozen=True):
    """A chat event: numbered, logged for sessions and history, and
    delivered to ``target``: None (everyone), a room key, or a DM's
    parties (a :class:`Direct`).  ``base`` is the packet already encoded
    for base clients, if the handler has it; ``publish`` tells the other
    nodes first (the entry is then stamped as ours, with that number)."""
    message: Message
    target: Any = None
    base: bytes | None = None
    move: Move | None = None
    publish: LinkCall | None = None
    seq: int = 0              # ours, published already (a rename asked for earlier)
    same_origin: bool = False  # the origin of the announce just before (a move's enter)


class Direct(msgspec.Struct, frozen=True):
    """A DM's target: the name keys of its parties (it is logged for them,
    and replayed to them only), and the connections to send it to now."""
    names: frozenset
    connections: tuple = ()


class Send(msgspec.Struct, frozen=True):
    """One packet (a message, or bytes already encoded) to one connection."""
    connection: Connection
    packet: Union[Message, bytes]


class Broadcast(msgspec.Struct, frozen=True):
    """A packet that is not a chat event (an information line) to every
    connection in a room, or everyone when ``room`` is None."""
    packet: bytes
    room: str | None = None


class Route(msgspec.Struct, frozen=True):
    """Deliver a room's broadcasts to the connection from now on (None: no
    room's), after what was meant for it where it was; ``ids``: from now on
    (True) its broadcasts carry each event's id and time (a session's)."""
    connection: Connection
    room: str | None
    ids: bool | None = None


class Close(msgspec.Struct, frozen=True):
    """Close the connection once what is queued for it is written."""
    connection: Connection


class PauseInput(msgspec.Struct, frozen=True):
    """Stop (or start again) reading what the connection sends."""
    connection: Connection
    paused: bool


Effect = Union[Announce, Send, Broadcast, Route, Close, PauseInput, LinkCall]
Effects = list  # of Effect


def link(name: str, *args: Any) -> LinkCall:
    return LinkCall(name, args)
