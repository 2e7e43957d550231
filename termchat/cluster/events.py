"""What cluster nodes say to each other, and what the link hands the event
loop: small typed event classes and their validation, with no threads and
no Redis.  The chat core imports this module, never the link."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Iterator, Literal

import msgspec
from msgspec import Meta

from termchat.wire import protocol as proto
from termchat.wire.protocol import Name, Text


# --------------------------------------------------------------------------
# What other nodes say (over Redis): validated at the door like client
# packets, by the same code (proto.Vocabulary) and the same field types.

def checked_users(users: dict[str, str], field: str) -> dict[str, str]:
    return {proto.checked_name(nick, "nick"): proto.checked_name(room, "room")
            for nick, room in users.items()}


Users = Annotated[dict[str, str], Meta(description="an object of nicks and rooms"),
                  checked_users]
Minutes = Annotated[int, Meta(ge=0, le=525_600, description="0 to 525600 minutes")]
Seconds = Annotated[float, Meta(ge=0, le=366 * 86400, description="a number of seconds")]
Address = Annotated[str, Meta(min_length=1, max_length=64, description="an address")]


class NodeEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind",
                omit_defaults=True):
    """Base of the events nodes publish to each other, tagged by their wire
    ``kind``.  ``node`` is filled in by the link (the sender's id);
    ``stream``, its position in the stream, by the reader (never sent)."""

    KIND: ClassVar[str] = proto.WireType()  # type: ignore[assignment]
    node: str = ""
    seq: proto.Count = 0  # the sender's count: duplicates are dropped
    stream: str = ""

    def to_wire(self, node: str, seq: int = 0) -> bytes:
        return proto.to_payload(msgspec.structs.replace(self, node=node, seq=seq))


def declare(name: str, kind: str, doc: str = "", **fields) -> Any:
    return proto.declare(NodeEvent, name, kind, doc, **fields)


RemoteJoin = declare("RemoteJoin", "join", "``replaces``: the node that held the nick when it "
                     "was claimed, if its heartbeat had stopped (its user is taken over, not "
                     "joined anew).", nick=Name, room=Name, replaces=(Text, ""))
RemoteLeave = declare("RemoteLeave", "leave", nick=Name)
RemoteMove = declare("RemoteMove", "move", "``way``: in world mode, the direction the mover "
                     "went.", nick=Name, old=Name, new=Name, way=(Text, ""))
RemoteSpeech = declare("RemoteSpeech", "say", "A chat or an emote (``said``) in a room.",
                       said=Literal["chat", "emote"], nick=Name, room=Name, message=Text)
RemoteDirect = declare("RemoteDirect", "dm", sender=Name, to=Name, message=Text)
RemoteRename = declare("RemoteRename", "rename", "A user of the node is now known as ``new``.",
                       old=Name, new=Name)
RemoteKick = declare("RemoteKick", "kick", "An operator of the sending node kicks ``nick`` (and "
                     "bans its address for ``minutes`` when not 0); every node shows it, the "
                     "user's node acts.", nick=Name, by=Name, reason=Text, minutes=Minutes)
RemoteBan = declare("RemoteBan", "ban", "An address is banned for ``seconds`` from now, on "
                    "every node (a duration: the nodes' clocks need not agree).",
                    address=Address, seconds=Seconds, reason=Text)
RemoteAway = declare("RemoteAway", "away", "A user is away with a message (empty: back).",
                     nick=Name, message=Text)
RemoteHeld = declare("RemoteHeld", "held", "A session user's connection dropped: its nick is "
                     "held for ``seconds`` (0: it is back), so that a hello on any node can "
                     "say so.", nick=Name, seconds=Seconds)
RemotePresence = declare("RemotePresence", "presence", "The whole list of a node's users "
                         "(nick -> room).", users=Users)
RemoteTakeover = declare("RemoteTakeover", "takeover", "The sending node resumed ``nick``'s "
                         "session, which ``old`` held: the user is now there, in ``room``; "
                         "nobody is told (it never left).", nick=Name, old=Address, room=Name)
RemoteItem = declare("RemoteItem", "item", "World mode: an item now lies in ``place`` or is "
                     "held by ``holder`` (a player's name key); the other is empty.",
                     item=Name, place=Text, holder=Text)


NODE_EVENTS = proto.Vocabulary(
    (RemoteJoin, RemoteLeave, RemoteMove, RemoteSpeech, RemoteDirect, RemoteAway, RemoteRename,
     RemoteKick, RemoteBan, RemotePresence, RemoteTakeover, RemoteItem, RemoteHeld), "event")


# --------------------------------------------------------------------------
# Stream entries and event positions.  A stream entry holds one event (a
# JSON object) or a pack of them (a JSON array: what one node published in
# one go).  The core needs every event to have its own place in the stream,
# ordered as the stream is: the index-th event of entry ``MS-SEQ`` is at
# ``MS-(SEQ * POSITIONS_PER_ENTRY + index)``, written like a stream ID and
# compared like one, so that the core keeps one notion of where it is.
# Everything the link hands the core (an event's ``stream``, a Progress
# cursor, the marks of a Snapshot and of a NodeDead) is such a position; an
# entry as a whole ends at its last possible position (entry_end).

PACK_LIMIT = 1000              # events in one stream entry, at most
POSITIONS_PER_ENTRY = 10_000   # room for them in the positions (> PACK_LIMIT)
_raw_items = msgspec.json.Decoder(list[msgspec.Raw])


def event_position(entry_id: str, index: int) -> str:
    """Where the index-th event of stream entry ``entry_id`` is."""
    milliseconds, _, sequence = entry_id.partition("-")
    return f"{milliseconds}-{int(sequence or 0) * POSITIONS_PER_ENTRY + index}"


def event_positions(entry_id: str) -> Iterator[str]:
    """The positions of the events of stream entry ``entry_id``, in order."""
    milliseconds, _, sequence = entry_id.partition("-")
    first = int(sequence or 0) * POSITIONS_PER_ENTRY
    return (f"{milliseconds}-{first + index}" for index in range(PACK_LIMIT))


def entry_end(entry_id: str) -> str:
    """The last position of stream entry ``entry_id``: after all its events."""
    return event_position(entry_id, POSITIONS_PER_ENTRY - 1)


def pack(wires: list[bytes]) -> bytes:
    """What a stream entry holds for these events (one: the event itself)."""
    return wires[0] if len(wires) == 1 else b"[" + b",".join(wires) + b"]"


def unpack(data: bytes) -> list[bytes]:
    """The events a stream entry holds (at most PACK_LIMIT; what is not a
    JSON array is one event, left for parse_node_event to judge)."""
    if data.lstrip()[:1] != b"[":
        return [data]
    try:
        return [bytes(item) for item in _raw_items.decode(data)[:PACK_LIMIT]]
    except msgspec.MsgspecError:
        return [data]  # parse_node_event says what is wrong with it


class Stamp(msgspec.Struct):
    """Who published an event and its number there: all a node needs of its
    own events when it reads them back (where they landed)."""
    node: str = ""
    seq: int = 0


_stamps = msgspec.json.Decoder(Stamp)


def stamp_of(data: bytes) -> Stamp | None:
    """An event's stamp, read without validating the rest (None: not JSON
    of that shape, which parse_node_event explains)."""
    try:
        return _stamps.decode(data)
    except msgspec.MsgspecError:
        return None


def parse_node_event(data: bytes | str, stream: str = "") -> NodeEvent:
    """One event read off Redis (at position ``stream``), validated;
    InvalidMessage if it is bad."""
    try:
        event = NODE_EVENTS.decode(data)
    except proto.MalformedPacket as exc:  # no stream to distrust: just this event
        raise proto.InvalidMessage(f"event {exc}") from exc
    if not event.node:
        raise proto.InvalidMessage("event has no node")
    msgspec.structs.force_setattr(event, "stream", stream)
    return event


# --------------------------------------------------------------------------
# What the link hands the event loop


@dataclass(frozen=True)
class Claimed:
    """The answer to a nick claim; ``replaces``: the dead node it was taken from."""
    token: Any
    nick: str
    granted: bool
    replaces: str = ""


@dataclass(frozen=True)
class Renamed:
    """The answer to a rename: the new nick was claimed and the old freed
    in one step (granted), or someone else holds it."""
    token: Any
    old: str
    new: str
    granted: bool
    seq: int = 0  # the number the rename event was published under


@dataclass(frozen=True)
class Snapshot:
    """Everyone's presence as Redis has it, and the bans in force
    (address -> (seconds left, reason)); ``mark``: the stream's last entry
    when it was read (it is presence as of there: the reader gets there
    first)."""
    nodes: dict  # node id -> {nick: room}
    bans: dict = field(default_factory=dict)
    mark: str = "0-0"


@dataclass(frozen=True)
class NodeDead:
    """A node stopped beating; ``sessions`` (nick -> session hash) are its
    users who keep the resume grace before they leave; ``mark``: the
    stream's last entry when it was found dead (its events up to there are
    its last words, read late; one after it means it runs again)."""
    node: str
    sessions: dict = field(default_factory=dict)
    mark: str = "0-0"


@dataclass(frozen=True)
class Progress:
    """The reader has read the stream up to ``cursor``; ``own`` pairs each
    of this node's events read meanwhile (its seq) with its position."""
    cursor: str
    own: tuple = ()
    start: bool = False       # where reading starts: nothing before it was read
    catching_up: bool = False  # (with start) reading the recent past, up to the end
    caught_up: bool = False    # the end of the stream as it was at the start is read

@dataclass(frozen=True)
class ItemTaken:
    """The answer to taking an item: Redis gave it to the player, or it was
    no longer there (someone on another node was quicker)."""
    token: Any
    item: str
    granted: bool
    unreachable: bool = False  # not granted because Redis is away


@dataclass(frozen=True)
class TakenOver:
    """The answer to a resume of a session held elsewhere: ``old`` is the
    node that held it (None: no such session, or Redis is away)."""
    token: Any
    nick: str
    old: str | None
    room: str = ""              # where the session's user last was
    unreachable: bool = False   # not answered: Redis is away (try again later)


@dataclass(frozen=True)
class LinkLost:
    reason: str


@dataclass(frozen=True)
class LinkRestored:
    pass


@dataclass(frozen=True)
class Conflict:
    nick: str


@dataclass(frozen=True)
class Undelivered:
    """What this node's users said while Redis was away and could not be
    kept for the other nodes (the buffer's bound was passed)."""
    count: int


@dataclass(frozen=True)
class DataLost:
    """Redis lost its data (restarted without persistence): presence is
    being read again and messages in flight may be gone."""


@dataclass(frozen=True)
class SessionGone:
    """Found when this node registers again (it was taken for dead): one of
    its sessions was taken up elsewhere, or ended, meanwhile."""
    nick: str


EVENT_TYPES: tuple[type, ...] = (Claimed, Renamed, Snapshot, NodeDead, LinkLost, LinkRestored,
                                 Conflict, Undelivered, DataLost, Progress, TakenOver, ItemTaken,
                                 SessionGone, *NODE_EVENTS.classes.values())



def stream_id(text: str) -> tuple[int, int]:
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)
