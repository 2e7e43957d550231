"""What cluster nodes say to each other, and what the link hands the event
loop: small typed event classes and their validation, with no threads and
no Redis.  The chat core imports this module, never the link."""

from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, field, fields
from typing import Annotated, Any, Callable, ClassVar, get_type_hints

from termchat.wire import protocol as proto


# --------------------------------------------------------------------------
# What other nodes say (over Redis): validated at the door like client packets


def _check_users(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise proto.InvalidMessage(f'field "{name}" must be an object')
    return {proto._check_name(nick, "nick"): proto._check_name(room, "room")
            for nick, room in value.items()}


def _check_speech_kind(value: Any, name: str) -> str:
    if value not in (proto.ChatFrom.TYPE, proto.EmoteFrom.TYPE):
        raise proto.InvalidMessage(f'field "{name}" must be chat or emote')
    return value


def _check_minutes(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 525_600:
        raise proto.InvalidMessage(f'field "{name}" must be 0 to 525600 minutes')
    return value


def _check_seconds(value: Any, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or \
            not 0 <= value <= 366 * 86400:
        raise proto.InvalidMessage(f'field "{name}" must be a number of seconds')
    return float(value)


def _check_address(value: Any, name: str) -> str:
    text = proto._check_text(value, name)
    if not 1 <= len(text) <= 64:
        raise proto.InvalidMessage(f'field "{name}" must be an address')
    return text


# A field's type names the check its wire value must pass.
Name = Annotated[str, proto._check_name]
Text = Annotated[str, proto._check_text]
SpeechKind = Annotated[str, _check_speech_kind]
Users = Annotated[dict, _check_users]
Minutes = Annotated[int, _check_minutes]
Seconds = Annotated[float, _check_seconds]
Address = Annotated[str, _check_address]


@dataclass(frozen=True)
class NodeEvent:
    """Base of the events nodes publish to each other.  ``KIND`` is the wire
    ``kind``; ``node`` is filled in by the link (the sender's id)."""

    KIND: ClassVar[str]
    node: str = field(default="", kw_only=True)
    seq: int = field(default=0, kw_only=True)  # the sender's count: duplicates are dropped
    stream: str = field(default="", kw_only=True, compare=False)  # its stream entry's ID

    def to_wire(self, node: str, seq: int = 0) -> str:
        obj = {"kind": self.KIND, "node": node, "seq": seq}
        obj.update({f.name: getattr(self, f.name) for f in fields(self)
                    if f.name not in ENVELOPE})
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def checks(cls) -> dict[str, Callable[[Any, str], Any]]:
        """Each wire field (all but the envelope) and the check it must pass."""
        hints = get_type_hints(cls, include_extras=True)
        return {f.name: hints[f.name].__metadata__[0] for f in fields(cls)
                if f.name not in ENVELOPE}


ENVELOPE = ("node", "seq", "stream")  # what every event has beside its own fields


@dataclass(frozen=True)
class RemoteJoin(NodeEvent):
    """``replaces``: the node that held the nick when it was claimed, if its
    heartbeat had stopped (its user is taken over, not joined anew)."""
    KIND = "join"
    nick: Name
    room: Name
    replaces: Text = ""


@dataclass(frozen=True)
class RemoteLeave(NodeEvent):
    KIND = "leave"
    nick: Name


@dataclass(frozen=True)
class RemoteMove(NodeEvent):
    """``way``: in world mode, the direction the mover went."""
    KIND = "move"
    nick: Name
    old: Name
    new: Name
    way: Text = ""


@dataclass(frozen=True)
class RemoteSpeech(NodeEvent):
    """A chat or an emote (``said``) in a room."""
    KIND = "say"
    said: SpeechKind
    nick: Name
    room: Name
    message: Text


@dataclass(frozen=True)
class RemoteDirect(NodeEvent):
    KIND = "dm"
    sender: Name
    to: Name
    message: Text


@dataclass(frozen=True)
class RemoteRename(NodeEvent):
    """A user of the node is now known as ``new``."""
    KIND = "rename"
    old: Name
    new: Name


@dataclass(frozen=True)
class RemoteKick(NodeEvent):
    """An operator of the sending node kicks ``nick`` (and bans its address
    for ``minutes`` when not 0); every node shows it, the user's node acts."""
    KIND = "kick"
    nick: Name
    by: Name
    reason: Text
    minutes: Minutes


@dataclass(frozen=True)
class RemoteBan(NodeEvent):
    """An address is banned for ``seconds`` from now, on every node (a
    duration: the nodes' clocks need not agree)."""
    KIND = "ban"
    address: Address
    seconds: Seconds
    reason: Text


@dataclass(frozen=True)
class RemoteAway(NodeEvent):
    """A user is away with a message (empty: back)."""
    KIND = "away"
    nick: Name
    message: Text


@dataclass(frozen=True)
class RemoteHeld(NodeEvent):
    """A session user's connection dropped: its nick is held for ``seconds``
    (0: it is back), so that a hello on any node can say so."""
    KIND = "held"
    nick: Name
    seconds: Seconds


@dataclass(frozen=True)
class RemotePresence(NodeEvent):
    """The whole list of a node's users (nick -> room)."""
    KIND = "presence"
    users: Users


@dataclass(frozen=True)
class RemoteTakeover(NodeEvent):
    """The sending node resumed ``nick``'s session, which ``old`` held: the
    user is now there, in ``room``; nobody is told (it never left)."""
    KIND = "takeover"
    nick: Name
    old: Address
    room: Name


@dataclass(frozen=True)
class RemoteItem(NodeEvent):
    """World mode: an item now lies in ``place`` or is held by ``holder``
    (a player's name key); the other is empty."""
    KIND = "item"
    item: Name
    place: Text
    holder: Text


NODE_EVENTS: dict[str, type[NodeEvent]] = {
    cls.KIND: cls for cls in (RemoteJoin, RemoteLeave, RemoteMove, RemoteSpeech,
                              RemoteDirect, RemoteAway, RemoteRename, RemoteKick, RemoteBan,
                              RemotePresence, RemoteTakeover, RemoteItem, RemoteHeld)
}
NODE_EVENT_CHECKS = {cls: cls.checks() for cls in NODE_EVENTS.values()}
NODE_EVENT_OPTIONAL = {cls: {f.name for f in fields(cls) if f.default is not MISSING}
                       for cls in NODE_EVENTS.values()}


def parse_node_event(data: bytes | str, stream: str = "") -> NodeEvent:
    """One event read off Redis (from the stream entry ``stream``),
    validated; InvalidMessage if it is bad."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise proto.InvalidMessage("event is not JSON") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("node"), str):
        raise proto.InvalidMessage("event is not an object with a node")
    seq = obj.get("seq", 0)
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise proto.InvalidMessage("event has a bad seq")
    cls = NODE_EVENTS.get(obj.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise proto.InvalidMessage(f"unknown event kind {str(obj.get('kind'))[:40]!r}")
    values = {}
    for name, check in NODE_EVENT_CHECKS[cls].items():
        if name in obj:
            values[name] = check(obj[name], name)
        elif name not in NODE_EVENT_OPTIONAL[cls]:
            raise proto.InvalidMessage(f'"{cls.KIND}" event needs field "{name}"')
    return cls(node=obj["node"], seq=seq, stream=stream, **values)


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
    of this node's events read meanwhile (its seq) with its stream ID."""
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
                                 SessionGone, *NODE_EVENTS.values())



def stream_id(text: str) -> tuple[int, int]:
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)
