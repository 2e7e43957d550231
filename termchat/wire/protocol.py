"""The chat wire protocol: framing, encoding and message validation.

Sans-IO: this module knows nothing of sockets, threads or terminals.  Bytes
go in through :class:`PacketDecoder`, whole payloads come out; payloads become
validated message objects through :func:`parse_client_message` (what a server
receives) and :func:`parse_server_message` (what a client receives).  Every
message object turns back into wire bytes with :func:`encode`.

A packet is a 2-byte big-endian payload length followed by that many bytes of
UTF-8 JSON encoding one object with a string field ``"type"``.

Messages are frozen msgspec Structs tagged by ``type``, declared from field
types that say what each field must be (:func:`declare`); a
:class:`Vocabulary` decodes one direction's union with one cached Decoder
and applies the project's own rules (names, non-empty text).  The cluster's
node events (termchat.cluster.events) are declared and decoded the same way.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Annotated, Any, Callable, ClassVar, Iterable, Union, get_args, get_origin

import msgspec
from msgspec import Meta

from termchat.wire.names import (MAX_NAME_LENGTH, NAMES_REMEMBERED, name_key,  # noqa: F401
                                 name_problem, normalize)

HEADER_SIZE = 2
MAX_PAYLOAD = 0xFFFF
SESSION_EXTRA = 200  # bytes a session's copy of a chat event may add to its plain form
# ("id" and "time", "history": true; a cluster's ids are the longest, under 100
# characters): a chat, emote or dm is taken only if it fits a packet with them
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
    Partial data stays buffered until the rest arrives; the buffer exists
    only meanwhile (an idle connection, between whole packets, holds none,
    and a chunk of whole packets is read where it is, never copied in).
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer: bytearray | None = None

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer
        if buffer is None:
            buffer = data
        else:
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
        if start == end:
            self._buffer = None
        elif buffer is data:
            self._buffer = bytearray(memoryview(data)[start:])
        elif start:
            del buffer[:start]
        return payloads

    @property
    def pending(self) -> int:
        """Bytes of an incomplete packet still waiting for their rest."""
        return len(self._buffer) if self._buffer is not None else 0


ENCODER = msgspec.json.Encoder()


def frame(payload: bytes) -> bytes:
    """Prefix a payload with its 2-byte length; refuse one that cannot fit."""
    if len(payload) > MAX_PAYLOAD:
        raise PacketTooLarge(
            f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


def encode_object(obj: dict[str, Any]) -> bytes:
    """Encode a JSON-able dict as one whole packet."""
    return frame(to_payload(obj))


def to_payload(value: Any) -> bytes:
    """UTF-8 JSON of a message or of plain values; PacketTooLarge for text
    that is not valid Unicode (a lone surrogate)."""
    try:
        return ENCODER.encode(value)
    except UnicodeEncodeError as exc:
        raise PacketTooLarge("text is not valid Unicode") from exc


def quote(text: str, limit: int = QUOTE_LIMIT) -> str:
    """At most ``limit`` characters of untrusted text, with unprintable ones
    escaped, for an error or a log line: no reply grows with the input."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return shown + "..." if len(text) > limit else shown


# --------------------------------------------------------------------------
# Field types.  msgspec checks a field's JSON type and bounds as it decodes;
# the description is what an error says the field must be.  A function in
# the Annotated is one of the project's own rules, applied to the value
# msgspec hands over (see Vocabulary).


def checked_name(value: str, field: str) -> str:
    """A nick or room name, in NFC, or InvalidMessage saying which rule it breaks."""
    if len(value) <= 4 * MAX_NAME_LENGTH:
        text, problem = name_verdict(value)
    else:  # too long to be remembered (or to be a name)
        text = normalize(value)
        problem = name_problem(text)
    if problem:
        raise InvalidMessage(f'invalid {field} "{quote(text)}": {problem}',
                             Code.BAD_NICK if field == "nick" else None)
    return text


@functools.lru_cache(maxsize=NAMES_REMEMBERED)
def name_verdict(value: str) -> tuple[str, str | None]:
    """A short name's NFC form and what is wrong with it, remembered for the
    names in use (a cluster node checks two in every event it reads)."""
    text = normalize(value)
    return text, name_problem(text)


def nonempty(value: str, field: str) -> str:
    if not value.strip():
        raise InvalidMessage(f'field "{field}" must not be empty')
    return value


Text = Annotated[str, Meta(description="a string")]
Name = Annotated[str, Meta(description="a string"), checked_name]
Said = Annotated[str, Meta(description="a string"), nonempty]
Token = Annotated[str, Meta(max_length=200, description="a string")]
Flag = Annotated[bool, Meta(description="true or false")]
Count = Annotated[int, Meta(ge=0, description="a number")]
Seconds = Annotated[float, Meta(ge=0, description="a number")]
Texts = Annotated[tuple[str, ...], Meta(description="a list of strings")]
TextMap = Annotated[dict[str, str], Meta(description="an object of strings")]
BanMinutes = Annotated[int, Meta(ge=1, le=525_600,
                                 description="a whole number of minutes, 1 to 525600")]
HistoryLimit = Annotated[int, Meta(ge=1, le=MAX_HISTORY,
                                   description=f"a whole number, 1 to {MAX_HISTORY}")]


class Vocabulary:
    """The messages of one direction (or the events of the cluster): one
    cached msgspec Decoder for their tagged union, then each field's own
    rule.  A payload msgspec refuses takes the slow path, which explains
    it in the words of PROTOCOL.md: not UTF-8 or not JSON
    (MalformedPacket), not an object, no string tag, an unknown one, a
    missing field, a field that is not what it must be (InvalidMessage);
    there, a null optional field counts as absent, as does text that is
    not valid Unicode in a field nobody reads."""

    def __init__(self, classes: Iterable[type], what: str = "message") -> None:
        classes = tuple(classes)
        self.what = what
        self.tag = classes[0].__struct_config__.tag_field
        self.classes = {cls.__struct_config__.tag: cls for cls in classes}
        self.decoder = msgspec.json.Decoder(Union[classes])  # type: ignore[valid-type]
        self.rules = {cls: rules for cls in classes if (rules := field_rules(cls))}

    def decode(self, payload: bytes | str) -> Any:
        try:
            message = self.decoder.decode(payload)
        except (msgspec.MsgspecError, RecursionError):
            message = self.decode_slowly(payload)
        rules = self.rules.get(type(message))
        if rules:
            for name, wire, rule in rules:
                value = getattr(message, name)
                if value is not None:
                    checked = rule(value, wire)
                    if checked is not value:
                        msgspec.structs.force_setattr(message, name, checked)
        return message

    def decode_slowly(self, payload: bytes | str) -> Any:
        try:
            obj = json.loads(payload if isinstance(payload, str) else payload.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise MalformedPacket("payload is not valid UTF-8") from exc
        except (ValueError, RecursionError) as exc:
            raise MalformedPacket("payload is not valid JSON") from exc
        if not isinstance(obj, dict):
            raise InvalidMessage("payload is not a JSON object")
        kind = obj.get(self.tag)
        if not isinstance(kind, str):
            raise InvalidMessage(f'payload has no string field "{self.tag}"')
        cls = self.classes.get(kind)
        if cls is None:
            raise InvalidMessage(f'unknown {self.what} {self.tag} "{quote(kind)}"')
        fields = {info.encode_name: info for info in msgspec.structs.fields(cls)}
        given = {key: value for key, value in obj.items()
                 if key in fields and (value is not None or fields[key].required)}
        try:
            message = msgspec.convert(dict(given, **{self.tag: kind}), cls)
        except msgspec.ValidationError as exc:
            raise self.explain(kind, fields, given, str(exc)) from exc
        for wire, info in fields.items():
            try:
                ENCODER.encode(getattr(message, info.name))
            except UnicodeEncodeError as exc:
                raise InvalidMessage(f'field "{wire}" is not valid Unicode') from exc
        return message

    def explain(self, kind: str, fields: dict, given: dict, error: str) -> InvalidMessage:
        missing = re.search(r"missing required field `([^`]+)`", error)
        if missing:
            return InvalidMessage(f'"{kind}" {self.what} needs field "{missing.group(1)}"')
        where = re.search(r"at `\$\.([^.[`]+)", error)
        if where and where.group(1) in fields:
            wire = where.group(1)
            return InvalidMessage(f'field "{wire}" {what_it_must_be(fields[wire].type, given[wire])}')
        return InvalidMessage(f"invalid {self.what}: {quote(error)}")


def field_rules(cls: type) -> tuple[tuple[str, str, Callable[[Any, str], Any]], ...]:
    """(attribute, wire name, rule) for each field of ``cls`` whose type
    carries one of the project's rules."""
    return tuple((info.name, info.encode_name, extra)
                 for info in msgspec.structs.fields(cls)
                 for extra in metadata(info.type) if callable(extra))


def metadata(annotation: Any) -> list:
    """What the Annotated type of a field carries (through ``| None``)."""
    options = get_args(annotation) if get_origin(annotation) is Union else (annotation,)
    return [extra for option in options for extra in getattr(option, "__metadata__", ())]


def what_it_must_be(annotation: Any, value: Any) -> str:
    for extra in metadata(annotation):
        if isinstance(extra, Meta) and extra.description:
            if isinstance(value, str) and extra.max_length is not None:
                return "is too long"
            return f"must be {extra.description}"
    return "is not valid"


# --------------------------------------------------------------------------
# Messages


class WireType:
    """``Message.TYPE``: the wire ``type`` of a message class (its struct tag)."""

    def __get__(self, message: Any, cls: type) -> str:
        return cls.__struct_config__.tag


class Message(msgspec.Struct, frozen=True, tag_field="type", omit_defaults=True):
    """Base of every message: a frozen msgspec Struct tagged by its wire
    ``type``; fields left at their default are not sent."""

    TYPE: ClassVar[str] = WireType()  # type: ignore[assignment]


class RoomCount(msgspec.Struct, frozen=True):
    name: Text
    count: Count


def declare(base: type, name: str, tag: str, doc: str = "", **fields: Any) -> Any:
    """A message (or event) class: a Struct deriving from ``base``, tagged
    ``tag``, whose fields are given as name=type, or name=(type, default)
    for a field that may be left out."""
    specs = [(field, *spec) if isinstance(spec, tuple) else (field, spec)
             for field, spec in fields.items()]
    return msgspec.defstruct(name, specs, bases=(base,), tag=tag, module=base.__module__,
                             namespace={"__doc__": doc or None})


MaybeToken = Token | None

# Client -> server
Hello = declare(Message, "Hello", "hello", "The first packet.  ``session`` asks for a "
                "resumable session; ``resume`` and ``after`` take one up again after a lost "
                "connection.", nick=Name, session=(Flag, False), resume=(MaybeToken, None),
                after=(MaybeToken, None), password=(MaybeToken, None))
ChangeNick = declare(Message, "ChangeNick", "nick", nick=Name)
BecomeOperator = declare(Message, "BecomeOperator", "op", password=Token)
KickRequest = declare(Message, "KickRequest", "kick", nick=Text, reason=(Text, ""))
BanRequest = declare(Message, "BanRequest", "ban", "Ban the user's address for ``minutes`` "
                     "and kick them; with no nick, list the bans.", nick=(Text | None, None),
                     minutes=(BanMinutes | None, None), reason=(Text, ""))
Away = declare(Message, "Away", "away", "Away with a message, or back when it is empty.",
               message=Text)
Quit = declare(Message, "Quit", "quit", "Leaving on purpose: the others see the leave at once.")
Chat = declare(Message, "Chat", "chat", message=Text)
SendDirect = declare(Message, "SendDirect", "dm", to=Text, message=Said)
Emote = declare(Message, "Emote", "emote", message=Said)
WhoRequest = declare(Message, "WhoRequest", "who")
EnterRoom = declare(Message, "EnterRoom", "enter", room=Name)
RoomsRequest = declare(Message, "RoomsRequest", "rooms")
HistoryRequest = declare(Message, "HistoryRequest", "history", "Older history of one's room: "
                         "up to ``limit`` chats and emotes before the entry ``before`` (an id "
                         "the server gave).", before=Token, limit=HistoryLimit)
# World mode (client -> server)
Look = declare(Message, "Look", "look", "Look around (no ``at``), or at an item or an exit.",
               at=(Text | None, None))
Go = declare(Message, "Go", "go", exit=Said)
Take = declare(Message, "Take", "take", item=Said)
Drop = declare(Message, "Drop", "drop", item=Said)
InventoryRequest = declare(Message, "InventoryRequest", "inventory")

# Server -> client
ChatFrom = declare(Message, "ChatFrom", "chat", nick=Text, message=Text)
Joined = declare(Message, "Joined", "join", nick=Text)
Left = declare(Message, "Left", "leave", nick=Text)
Error = declare(Message, "Error", "error", "A refusal: ``code`` (see Code) says what it "
                "refuses, ``message`` in words.", message=Text, code=(Text, ""))
Info = declare(Message, "Info", "info", message=Text)
DirectFrom = declare(Message, "DirectFrom", "dm", "``sender`` is ``from`` on the wire.",
                     sender=(Text, msgspec.field(name="from")), to=Text, message=Text)
EmoteFrom = declare(Message, "EmoteFrom", "emote", nick=Text, message=Text)
WhoList = declare(Message, "WhoList", "who", "``away``: nick -> away message, for those in "
                  "the list who are away.", room=Text, nicks=Texts, away=(TextMap | None, None))
EnteredRoom = declare(Message, "EnteredRoom", "enter", "``way``: in world mode, the direction "
                      "the mover went.", nick=Text, room=Text, way=(Text | None, None))
ExitedRoom = declare(Message, "ExitedRoom", "exit", EnteredRoom.__doc__,
                     nick=Text, room=Text, way=(Text | None, None))
Kicked = declare(Message, "Kicked", "kick", nick=Text, by=Text, reason=Text)
NickChanged = declare(Message, "NickChanged", "nick", old=Text, nick=Text)
SessionGranted = declare(Message, "SessionGranted", "session", token=Text, grace=Seconds)
Resumed = declare(Message, "Resumed", "resumed", missed=Count)
HistoryEnd = declare(Message, "HistoryEnd", "history", "After the answer to a history "
                     "request: whether older history is left.", more=Flag)
PlaceView = declare(Message, "PlaceView", "look", "What a player sees of a place (world mode). "
                    " Long lists are cut: ``more_items`` and ``more_people`` say how many were "
                    "left out.", room=Text, title=Text, description=Text, exits=Texts,
                    items=Texts, people=Texts, more_items=(Count, 0), more_people=(Count, 0))
Inventory = declare(Message, "Inventory", "inventory", "What a player carries; ``more``: how "
                    "many were left out of a long list.", items=Texts, more=(Count, 0))
RoomList = declare(Message, "RoomList", "rooms", rooms=Annotated[
    tuple[RoomCount, ...], Meta(description="a list of rooms, each with a name and a count")])


CLIENT = Vocabulary((Hello, Chat, SendDirect, Emote, WhoRequest, EnterRoom, RoomsRequest, Quit,
                     Away, ChangeNick, BecomeOperator, KickRequest, BanRequest, Look, Go, Take,
                     Drop, InventoryRequest, HistoryRequest))
SERVER = Vocabulary((ChatFrom, Joined, Left, Error, Info, DirectFrom, EmoteFrom, WhoList,
                     EnteredRoom, ExitedRoom, RoomList, SessionGranted, Resumed, NickChanged,
                     Kicked, PlaceView, Inventory, HistoryEnd))
CLIENT_MESSAGES: dict[str, type[Message]] = CLIENT.classes
SERVER_MESSAGES: dict[str, type[Message]] = SERVER.classes


class Stamp(msgspec.Struct):
    """The session fields a server packet may carry beside its message,
    taken only when well-formed (unknown or odd values are ignored)."""
    id: Any = None
    time: Any = None
    history: Any = None


STAMP = msgspec.json.Decoder(Stamp)


def parse_client_message(payload: bytes) -> Message:
    """Validate a payload a client sent; raise ProtocolError if it is bad."""
    return CLIENT.decode(payload)


def parse_server_message(payload: bytes) -> Message:
    """Validate a payload a server sent; raise ProtocolError if it is bad."""
    return SERVER.decode(payload)


def parse_server_packet(payload: bytes) -> tuple[Message, dict[str, Any]]:
    """Like parse_server_message, plus the session fields the packet
    carries (id, time, history), checked; unknown fields are ignored."""
    message = SERVER.decode(payload)
    stamp = STAMP.decode(payload)
    meta: dict[str, Any] = {}
    if isinstance(stamp.id, str) and len(stamp.id) <= 200:
        meta["id"] = stamp.id
    if isinstance(stamp.time, (int, float)) and not isinstance(stamp.time, bool):
        meta["time"] = float(stamp.time)
    if stamp.history is True:
        meta["history"] = True
    return message, meta


def to_json(value: Any) -> Any:
    """A message or field value as the JSON values the wire carries."""
    return msgspec.to_builtins(value)


def encode(message: Message, **extra: Any) -> bytes:
    """One whole packet for ``message`` (plus ``extra`` fields, such as a
    session's id and time); PacketTooLarge if it cannot fit."""
    payload = to_payload(message)
    if extra:  # {"type":...} + {"id":...} -> {"type":...,"id":...}
        payload = payload[:-1] + b"," + to_payload(extra)[1:]
    return frame(payload)


def fits_in_packet(message: Message) -> bool:
    """Whether a rebroadcast (ChatFrom, EmoteFrom, DirectFrom) fits a packet
    in every copy the server sends, a session's too (SESSION_EXTRA)."""
    return len(to_payload(message)) + SESSION_EXTRA <= MAX_PAYLOAD
