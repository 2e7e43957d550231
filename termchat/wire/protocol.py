"""The chat wire protocol: framing, encoding and message validation.

Sans-IO: this module knows nothing of sockets, threads or terminals.  Bytes
go in through :class:`PacketDecoder`, whole payloads come out; payloads become
validated message objects through :func:`parse_client_message` (what a server
receives) and :func:`parse_server_message` (what a client receives).  Every
message object turns back into wire bytes with :func:`encode`.

A packet is a 2-byte big-endian payload length followed by that many bytes of
UTF-8 JSON encoding one object with a string field ``"type"``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from termchat.wire.names import MAX_NAME_LENGTH, name_key, name_problem, normalize  # noqa: F401

HEADER_SIZE = 2
MAX_PAYLOAD = 0xFFFF
LOBBY = "lobby"
QUOTE_LIMIT = 64  # characters of client input an error message repeats
MAX_HISTORY = 100  # chats and emotes one history request may ask for


class ProtocolError(Exception):
    """Anything wrong with bytes or messages crossing the wire."""


class MalformedPacket(ProtocolError):
    """The peer sent a payload that is not UTF-8 JSON: the stream is garbage."""


class InvalidMessage(ProtocolError):
    """The peer sent a JSON payload that is not a valid message; ``code`` is
    the refusal code its error carries (a bad nick, or any other fault)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or Code.BAD_PACKET


class PacketTooLarge(ProtocolError):
    """Encoding a message would not fit in one packet (local misuse)."""


class Code:
    """What an ``error`` refuses or ends, for clients to decide by (never by
    the text): every error the server sends carries one (SPEC, "Refusals
    carry a code")."""

    BAD_PACKET = "bad-packet"          # malformed or invalid input
    NO_HELLO = "no-hello"              # no hello within the hello timeout
    BAD_NICK = "bad-nick"
    NICK_TAKEN = "nick-taken"
    NICK_HELD = "nick-held"            # held for a session whose connection dropped
    NEEDS_PASSWORD = "needs-password"
    WRONG_PASSWORD = "wrong-password"
    TOO_MANY = "too-many"              # connections from one address
    THROTTLED = "throttled"            # new connections from one address, too fast
    BANNED = "banned"
    KICKED = "kicked"
    SESSION_EXPIRED = "session-expired"
    REPLACED = "replaced"              # the session was resumed on another connection
    NO_USER = "no-user"
    NOT_OPERATOR = "not-operator"
    NO_WORLD = "no-world"
    WORLD = "world"                    # a game refusal: shown as the world's narration
    TLS_ONLY = "tls-only"
    TOO_LONG = "too-long"


# --------------------------------------------------------------------------
# Framing


class PacketDecoder:
    """Incremental framing decoder: feed it any chunks, get whole payloads.

    ``feed`` returns the payloads (bytes) completed by the chunk, in order.
    Partial data stays buffered until the rest arrives.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += data
        payloads = []
        start = 0
        end = len(buffer)
        while end - start >= HEADER_SIZE:
            length = (buffer[start] << 8) | buffer[start + 1]
            stop = start + HEADER_SIZE + length
            if stop > end:
                break
            payloads.append(bytes(buffer[start + HEADER_SIZE:stop]))
            start = stop
        if start:
            del buffer[:start]
        return payloads

    @property
    def pending(self) -> int:
        """Bytes of an incomplete packet still waiting for their rest."""
        return len(self._buffer)


def frame(payload: bytes) -> bytes:
    """Prefix a payload with its 2-byte length; refuse one that cannot fit."""
    if len(payload) > MAX_PAYLOAD:
        raise PacketTooLarge(
            f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


def encode_object(obj: dict[str, Any]) -> bytes:
    """Encode a JSON-able dict as one whole packet."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        payload = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PacketTooLarge("text is not valid Unicode") from exc
    return frame(payload)


def decode_object(payload: bytes) -> dict[str, Any]:
    """Decode one payload into a JSON object with a string ``type``."""
    try:
        obj = json.loads(payload.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MalformedPacket("payload is not valid UTF-8") from exc
    except (ValueError, RecursionError) as exc:
        raise MalformedPacket("payload is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise InvalidMessage("payload is not a JSON object")
    if not isinstance(obj.get("type"), str):
        raise InvalidMessage('payload has no string field "type"')
    return obj


# --------------------------------------------------------------------------
# Field rules


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """At most ``limit`` characters of untrusted text, with unprintable ones
    escaped, for an error or a log line: no reply grows with the input."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + "..." if len(text) > limit else shown


def _check_text(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidMessage(f'field "{field}" must be a string')
    if not _is_valid_unicode(value):
        raise InvalidMessage(f'field "{field}" is not valid Unicode')
    return value


def _check_name(value: Any, field: str) -> str:
    text = normalize(_check_text(value, field))
    problem = name_problem(text)
    if problem:
        raise InvalidMessage(f'invalid {field} "{quote(text)}": {problem}',
                             Code.BAD_NICK if field == "nick" else None)
    return text


def _check_nonempty(value: Any, field: str) -> str:
    text = _check_text(value, field)
    if not text.strip():
        raise InvalidMessage(f'field "{field}" must not be empty')
    return text


def _check_number(value: Any, field: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
        raise InvalidMessage(f'field "{field}" must be a number')
    return value


def _check_text_map(value: Any, field: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise InvalidMessage(f'field "{field}" must be an object')
    return {_check_text(k, field): _check_text(v, field) for k, v in value.items()}


def _check_text_list(value: Any, field: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidMessage(f'field "{field}" must be a list')
    return tuple(_check_text(item, field) for item in value)


def _check_room_counts(value: Any, field: str) -> tuple[RoomCount, ...]:
    if not isinstance(value, list):
        raise InvalidMessage(f'field "{field}" must be a list')
    rooms = []
    for item in value:
        if not isinstance(item, dict):
            raise InvalidMessage(f'field "{field}" must hold objects')
        count = item.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise InvalidMessage(f'field "{field}" needs a count for each room')
        rooms.append(RoomCount(_check_text(item.get("name"), "name"), count))
    return tuple(rooms)


# --------------------------------------------------------------------------
# Messages


@dataclass(frozen=True, slots=True)
class RoomCount:
    name: str
    count: int


class Message:
    """Base of every message; subclasses are frozen dataclasses.

    ``TYPE`` is the wire ``type``; ``CHECKS`` maps each field to the function
    that validates it when the message is parsed off the wire; ``OPTIONAL``
    does the same for fields that may be absent (they keep their default,
    and are left out of the encoding while they have it).
    """

    __slots__ = ()
    TYPE: ClassVar[str]
    CHECKS: ClassVar[dict[str, Any]] = {}
    OPTIONAL: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        obj: dict[str, Any] = {"type": self.TYPE}
        for field in fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if field.name in self.OPTIONAL and value == field.default:
                continue
            obj[_wire_name(field.name)] = to_json(value)
        return obj


def _wire_name(field_name: str) -> str:
    return "from" if field_name == "sender" else field_name


def to_json(value: Any) -> Any:
    """A field value as the JSON the wire carries."""
    if isinstance(value, tuple):
        return [to_json(item) for item in value]
    if isinstance(value, RoomCount):
        return {"name": value.name, "count": value.count}
    return value


# Client -> server


def _check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidMessage(f'field "{field}" must be true or false')
    return value


def _check_token(value: Any, field: str) -> str:
    text = _check_text(value, field)
    if len(text) > 200:
        raise InvalidMessage(f'field "{field}" is too long')
    return text


@dataclass(frozen=True, slots=True)
class Hello(Message):
    """The first packet.  ``session`` asks for a resumable session;
    ``resume`` and ``after`` take one up again after a lost connection."""
    TYPE = "hello"
    CHECKS = {"nick": _check_name}
    OPTIONAL = {"session": _check_bool, "resume": _check_token, "after": _check_token,
                "password": _check_token}
    nick: str
    session: bool = False
    resume: str | None = None
    after: str | None = None
    password: str | None = None


@dataclass(frozen=True, slots=True)
class ChangeNick(Message):
    TYPE = "nick"
    CHECKS = {"nick": _check_name}
    nick: str


@dataclass(frozen=True, slots=True)
class BecomeOperator(Message):
    TYPE = "op"
    CHECKS = {"password": _check_token}
    password: str


def _check_minutes(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 525_600:
        raise InvalidMessage(f'field "{field}" must be a whole number of minutes, 1 to 525600')
    return value


@dataclass(frozen=True, slots=True)
class KickRequest(Message):
    TYPE = "kick"
    CHECKS = {"nick": _check_text}
    OPTIONAL = {"reason": _check_text}
    nick: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class BanRequest(Message):
    """Ban the user's address for ``minutes`` and kick them; with no nick,
    list the bans."""
    TYPE = "ban"
    OPTIONAL = {"nick": _check_text, "minutes": _check_minutes, "reason": _check_text}
    nick: str | None = None
    minutes: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Away(Message):
    """Away with a message, or back when it is empty."""
    TYPE = "away"
    CHECKS = {"message": _check_text}
    message: str


@dataclass(frozen=True, slots=True)
class Quit(Message):
    """Leaving on purpose: the others see the leave at once."""
    TYPE = "quit"


@dataclass(frozen=True, slots=True)
class Chat(Message):
    TYPE = "chat"
    CHECKS = {"message": _check_text}
    message: str


@dataclass(frozen=True, slots=True)
class SendDirect(Message):
    TYPE = "dm"
    CHECKS = {"to": _check_text, "message": _check_nonempty}
    to: str
    message: str


@dataclass(frozen=True, slots=True)
class Emote(Message):
    TYPE = "emote"
    CHECKS = {"message": _check_nonempty}
    message: str


@dataclass(frozen=True, slots=True)
class WhoRequest(Message):
    TYPE = "who"


@dataclass(frozen=True, slots=True)
class EnterRoom(Message):
    TYPE = "enter"
    CHECKS = {"room": _check_name}
    room: str


@dataclass(frozen=True, slots=True)
class RoomsRequest(Message):
    TYPE = "rooms"


# World mode (client -> server)


@dataclass(frozen=True, slots=True)
class Look(Message):
    """Look around (no ``at``), or at an item or an exit."""
    TYPE = "look"
    OPTIONAL = {"at": _check_text}
    at: str | None = None


@dataclass(frozen=True, slots=True)
class Go(Message):
    TYPE = "go"
    CHECKS = {"exit": _check_nonempty}
    exit: str


@dataclass(frozen=True, slots=True)
class Take(Message):
    TYPE = "take"
    CHECKS = {"item": _check_nonempty}
    item: str


@dataclass(frozen=True, slots=True)
class Drop(Message):
    TYPE = "drop"
    CHECKS = {"item": _check_nonempty}
    item: str


@dataclass(frozen=True, slots=True)
class InventoryRequest(Message):
    TYPE = "inventory"


def _check_limit(value: Any, field: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_HISTORY:
        raise InvalidMessage(f'field "{field}" must be a whole number, 1 to {MAX_HISTORY}')
    return value


@dataclass(frozen=True, slots=True)
class HistoryRequest(Message):
    """Older history of one's room: up to ``limit`` chats and emotes before
    the entry ``before`` (an id the server gave)."""
    TYPE = "history"
    CHECKS = {"before": _check_token, "limit": _check_limit}
    before: str
    limit: int


# Server -> client


@dataclass(frozen=True, slots=True)
class ChatFrom(Message):
    TYPE = "chat"
    CHECKS = {"nick": _check_text, "message": _check_text}
    nick: str
    message: str


@dataclass(frozen=True, slots=True)
class Joined(Message):
    TYPE = "join"
    CHECKS = {"nick": _check_text}
    nick: str


@dataclass(frozen=True, slots=True)
class Left(Message):
    TYPE = "leave"
    CHECKS = {"nick": _check_text}
    nick: str


@dataclass(frozen=True, slots=True)
class Error(Message):
    """A refusal: ``code`` (see Code) says what it refuses, ``message`` in words."""
    TYPE = "error"
    CHECKS = {"message": _check_text}
    OPTIONAL = {"code": _check_text}
    message: str
    code: str = ""


@dataclass(frozen=True, slots=True)
class Info(Message):
    TYPE = "info"
    CHECKS = {"message": _check_text}
    message: str


@dataclass(frozen=True, slots=True)
class DirectFrom(Message):
    TYPE = "dm"
    CHECKS = {"sender": _check_text, "to": _check_text, "message": _check_text}
    sender: str
    to: str
    message: str


@dataclass(frozen=True, slots=True)
class EmoteFrom(Message):
    TYPE = "emote"
    CHECKS = {"nick": _check_text, "message": _check_text}
    nick: str
    message: str


@dataclass(frozen=True, slots=True)
class WhoList(Message):
    """``away``: nick -> away message, for those in the list who are away."""
    TYPE = "who"
    CHECKS = {"room": _check_text, "nicks": _check_text_list}
    OPTIONAL = {"away": lambda value, field: _check_text_map(value, field)}
    room: str
    nicks: tuple[str, ...]
    away: dict | None = None


@dataclass(frozen=True, slots=True)
class EnteredRoom(Message):
    """``way``: in world mode, the direction the mover went."""
    TYPE = "enter"
    CHECKS = {"nick": _check_text, "room": _check_text}
    OPTIONAL = {"way": _check_text}
    nick: str
    room: str
    way: str | None = None


@dataclass(frozen=True, slots=True)
class ExitedRoom(Message):
    """``way``: in world mode, the direction the mover went."""
    TYPE = "exit"
    CHECKS = {"nick": _check_text, "room": _check_text}
    OPTIONAL = {"way": _check_text}
    nick: str
    room: str
    way: str | None = None


@dataclass(frozen=True, slots=True)
class Kicked(Message):
    TYPE = "kick"
    CHECKS = {"nick": _check_text, "by": _check_text, "reason": _check_text}
    nick: str
    by: str
    reason: str


@dataclass(frozen=True, slots=True)
class NickChanged(Message):
    TYPE = "nick"
    CHECKS = {"old": _check_text, "nick": _check_text}
    old: str
    nick: str


@dataclass(frozen=True, slots=True)
class SessionGranted(Message):
    TYPE = "session"
    CHECKS = {"token": _check_text, "grace": lambda value, field: _check_number(value, field)}
    token: str
    grace: float


@dataclass(frozen=True, slots=True)
class Resumed(Message):
    TYPE = "resumed"
    CHECKS = {"missed": lambda value, field: int(_check_number(value, field))}
    missed: int


@dataclass(frozen=True, slots=True)
class HistoryEnd(Message):
    """After the answer to a history request: whether older history is left."""
    TYPE = "history"
    CHECKS = {"more": _check_bool}
    more: bool


@dataclass(frozen=True, slots=True)
class PlaceView(Message):
    """What a player sees of a place (world mode).  Long lists are cut:
    ``more_items`` and ``more_people`` say how many were left out."""
    TYPE = "look"
    CHECKS = {"room": _check_text, "title": _check_text, "description": _check_text,
              "exits": _check_text_list, "items": _check_text_list,
              "people": _check_text_list}
    OPTIONAL = {"more_items": lambda value, field: int(_check_number(value, field)),
                "more_people": lambda value, field: int(_check_number(value, field))}
    room: str
    title: str
    description: str
    exits: tuple[str, ...]
    items: tuple[str, ...]
    people: tuple[str, ...]
    more_items: int = 0
    more_people: int = 0


@dataclass(frozen=True, slots=True)
class Inventory(Message):
    """What a player carries; ``more``: how many were left out of a long list."""
    TYPE = "inventory"
    CHECKS = {"items": _check_text_list}
    OPTIONAL = {"more": lambda value, field: int(_check_number(value, field))}
    items: tuple[str, ...]
    more: int = 0


@dataclass(frozen=True, slots=True)
class RoomList(Message):
    TYPE = "rooms"
    CHECKS = {"rooms": _check_room_counts}
    rooms: tuple[RoomCount, ...]


CLIENT_MESSAGES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (Hello, Chat, SendDirect, Emote, WhoRequest, EnterRoom, RoomsRequest, Quit,
                Away, ChangeNick, BecomeOperator, KickRequest, BanRequest, Look, Go, Take,
                Drop, InventoryRequest, HistoryRequest)
}
SERVER_MESSAGES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (ChatFrom, Joined, Left, Error, Info, DirectFrom, EmoteFrom, WhoList,
                EnteredRoom, ExitedRoom, RoomList, SessionGranted, Resumed, NickChanged,
                Kicked, PlaceView, Inventory, HistoryEnd)
}


def _build(registry: dict[str, type[Message]], obj: dict[str, Any]) -> Message:
    cls = registry.get(obj["type"])
    if cls is None:
        raise InvalidMessage(f'unknown message type "{quote(obj["type"])}"')
    values = {}
    for name, check in cls.CHECKS.items():
        wire = _wire_name(name)
        if wire not in obj:
            raise InvalidMessage(f'"{cls.TYPE}" message needs field "{wire}"')
        values[name] = check(obj[wire], wire)
    for name, check in cls.OPTIONAL.items():
        if obj.get(name) is not None:
            values[name] = check(obj[name], name)
    return cls(**values)


def parse_client_message(payload: bytes) -> Message:
    """Validate a payload a client sent; raise ProtocolError if it is bad."""
    return _build(CLIENT_MESSAGES, decode_object(payload))


def parse_server_message(payload: bytes) -> Message:
    """Validate a payload a server sent; raise ProtocolError if it is bad."""
    return parse_server_packet(payload)[0]



def parse_server_packet(payload: bytes) -> tuple[Message, dict[str, Any]]:
    """Like parse_server_message, plus the session fields the packet
    carries (id, time, history), checked; unknown fields are ignored."""
    obj = decode_object(payload)
    message = _build(SERVER_MESSAGES, obj)
    meta: dict[str, Any] = {}
    if isinstance(obj.get("id"), str) and len(obj["id"]) <= 200:
        meta["id"] = obj["id"]
    if isinstance(obj.get("time"), (int, float)) and not isinstance(obj.get("time"), bool):
        meta["time"] = float(obj["time"])
    if obj.get("history") is True:
        meta["history"] = True
    return message, meta


def encode(message: Message, **extra: Any) -> bytes:
    """One whole packet for ``message`` (plus ``extra`` fields, such as a
    session's id and time); PacketTooLarge if it cannot fit."""
    obj = message.to_dict()
    obj.update(extra)
    return encode_object(obj)


def fits_in_packet(message: Message) -> bool:
    try:
        encode(message)
    except PacketTooLarge:
        return False
    return True
