"""What happens to users: arriving, leaving, dropping and resuming, moving,
renaming, being kicked or banned.

Each action changes the state of the components it concerns (the gate,
presence, the event log, sessions, moderation) and returns the effects
for the facade to carry out; the client's packet handlers (commands.py),
the cluster view (clusterview.py) and time passing all come here for them.
An action never carries out an effect itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from termchat.cluster import events
from termchat.core.effects import Announce, Close, Direct, Effects, Move, PauseInput, Route, \
    Send, link
from termchat.core.eventlog import EventLog, Position, parse_position
from termchat.core.gate import Connection, ConnectionGate, Limits, State, address_key
from termchat.core.moderation import Ban, Moderation
from termchat.core.ports import Saved
from termchat.core.presence import Presence, Room, User
from termchat.core.sessions import Session, Sessions
from termchat.wire import protocol as proto
from termchat.wire.protocol import Code
from termchat.world import model as world

log = logging.getLogger("chat_core")

MISTAKES_LOGGED = 5  # a client's mistakes logged before the rest go unlogged
SESSION_EXPIRED = proto.Error("session expired", Code.SESSION_EXPIRED)


@dataclass(frozen=True)
class SessionSettings:
    history: int = 20              # recent chats and emotes a session newcomer gets
    resume_grace: float = 60.0     # seconds a lost session stays present


@dataclass
class Parts:
    """The components an action may use, and the settings they share."""

    gate: ConnectionGate
    presence: Presence
    log: EventLog
    sessions: Sessions
    moderation: Moderation
    settings: SessionSettings
    limits: Limits
    world_state: world.WorldState | None = None
    node_id: str | None = None    # this node's, in a cluster
    view: Any = None              # the cluster view (clusterview.ClusterView), in a cluster
    complaints: set = field(default_factory=set)  # about other nodes, logged once

    @property
    def cluster(self) -> bool:
        return self.node_id is not None


def publish(parts: Parts, name: str, *args: Any):
    """The link call that tells the cluster, in a cluster (else None)."""
    return link(name, *args) if parts.cluster else None


# ---- refusing and mistakes ----

def mistake(conn: Connection, reason: str, closing: bool = False) -> None:
    """Log a client's mistake: one line each, and only the first few."""
    conn.mistakes += 1
    nick = conn.user.nick if conn.user is not None else "?"
    if conn.mistakes <= MISTAKES_LOGGED:
        log.info("error %s %s: %s%s", nick, conn.peer, reason, "; closing" if closing else "")
    elif conn.mistakes == MISTAKES_LOGGED + 1:
        log.info("error %s %s: more mistakes; not logging them", nick, conn.peer)


def turned_away(parts: Parts, address: tuple, now: float) -> proto.Error | None:
    """A connection past its address's connection rate, told so at the door,
    before it costs a connection record (None: it may come in, or be
    refused later in the ordinary way)."""
    key = address_key(str(address[0]))
    if not parts.gate.over_connect_rate(key, now):
        return None
    refusal = parts.gate.connect_refusal(key, now)
    note_throttled(parts, key)
    return proto.Error(*refusal)


def note_throttled(parts: Parts, key: str) -> None:
    """Log an address's connection flood once, when its first is refused."""
    if parts.gate.first_refusal(key):
        log.info("throttling new connections from %s", key)


def admit_connection(parts: Parts, outlet: Any, address: tuple, now: float) -> Effects:
    """A new connection: let in, or refused (over the limits, or banned)."""
    conn, refusal = parts.gate.admit(outlet, address, now)
    banned = ban_refusal(parts, conn, now)
    if banned is not None:
        parts.gate.release(conn)
        refusal = banned
    if refusal is None:
        log.info("connect %s", conn.peer)
        return []
    throttled = refusal[1] == Code.THROTTLED
    if throttled:
        note_throttled(parts, conn.ban_key)
    return refuse(parts, conn, *refusal, now, logged=not throttled)


def refuse(parts: Parts, conn: Connection, reason: str, code: str, now: float,
           logged: bool = True) -> Effects:
    """An error, then the close once it is written (its user, if any, leaves)."""
    if logged:
        mistake(conn, reason, closing=True)
    effects: Effects = [Send(conn, proto.Error(reason, code))]
    if conn.user is not None:
        effects += leave(parts, conn.user, "refused")
    conn.drop_held()
    conn.become(State.CLOSING)
    return effects + [Close(conn), *unpause(conn)]


def ban_refusal(parts: Parts, conn: Connection, now: float) -> tuple[str, str] | None:
    """Why the connection's address may not come in (a ban), or None: asked
    at connect and again at every hello, fresh or resume (a connection
    opened before the ban must not let its address in after it)."""
    ban = parts.moderation.banned(conn.ban_key, now)
    return ban.refusal(now) if ban is not None else None


def unpause(conn: Connection) -> Effects:
    """Read again (and discard: a closing connection's input is dropped)."""
    if conn.paused:
        conn.paused = False
        return [PauseInput(conn, False)]
    return []


def paused(conn: Connection, wanted: bool) -> Effects:
    if conn.paused != wanted:
        conn.paused = wanted
        return [PauseInput(conn, wanted)]
    return []


# ---- arriving ----

def join(parts: Parts, conn: Connection, nick: str, session: bool, now: float,
         room: Room | None = None, replaces: str = "") -> Effects:
    """The hello is accepted: the user is in the chat, in its room (the
    lobby, or in world mode where it was), and everyone sees it arrive;
    a session client then gets its token and the room's recent history."""
    presence, log_ = parts.presence, parts.log
    user = presence.new_user(nick)
    user.since = log_.last_number + 1  # its join is next
    log_.own_again(user.key)
    room = room or presence.lobby
    recent = log_.recent(room.key) if session else []
    attach(conn, user)
    effects: Effects = [Route(conn, room.key, ids=session or None)]
    if session:
        token = parts.sessions.start(user, log_.last_number + 1)  # its join is next
        if parts.cluster:
            effects.append(link("record_session", user.session.digest, nick, None, room.name))
    presence.add(user, room)
    log_.room_in_use(room.key, True)
    log_.name_in_use(user.key, True)
    effects.append(Announce(proto.Joined(nick), None,
                            publish=publish(parts, "joined", nick, room.name, replaces)))
    log.info("hello %s %s", nick, conn.peer)
    if session:
        effects.append(Send(conn, proto.SessionGranted(token, parts.settings.resume_grace)))
        effects += [Send(conn, entry.history_packet()) for entry in recent]
    effects += [Send(conn, proto.Info(line)) for line in parts.moderation.access.motd]
    return effects


def attach(conn: Connection, user: User) -> None:
    conn.become(State.JOINED)
    conn.user, user.connection = user, conn
    user.address = conn.ban_key


def restore(parts: Parts, saved: Saved, now: float) -> Effects:
    """What the store kept when the server last stopped: the log's entries
    under their numbers, the bans, and the users then: those with a session
    are back, detached, for a fresh grace (they resume as if their
    connection had dropped, and nobody sees them leave or come back); the
    others left with the process, and that is logged and said."""
    for number, time, message, target, size, mover in saved.entries:
        parts.log.restore(number, time, message, target, size, mover)
    parts.log.last_number = max(parts.log.last_number, saved.last_number)
    for address, seconds, reason in saved.bans:
        parts.moderation.bans[address] = Ban(now + seconds, reason)
    effects: Effects = []
    for key, nick, room, digest, start in saved.users:
        if digest is None:
            parts.presence.store.user_gone(key)
            effects.append(Announce(proto.Left(nick), None))
            continue
        user = parts.presence.new_user(nick)
        session = parts.sessions.restore(user, digest, start)
        parts.presence.add(user, parts.presence.room_named(room))
        parts.sessions.detach(session, now)
        parts.log.room_in_use(user.room.key, True)
        parts.log.name_in_use(user.key, True)
    log.info("restored %d entries, %d sessions, %d bans", len(saved.entries),
             len(parts.sessions.by_digest), len(saved.bans))
    return effects


# ---- leaving ----

def leave(parts: Parts, user: User, reason: str) -> Effects:
    """The user is gone from the chat: everyone sees it leave (on every node)."""
    effects: Effects = []
    conn = user.connection
    if conn is not None:
        conn.drop_held()
        conn.user, user.connection = None, None
        effects.append(Route(conn, None))
    log.info("leave %s %s: %s", user.nick, conn.peer if conn else "(detached)", reason)
    effects += forget(parts, user)
    session = user.session
    if session is not None:
        parts.sessions.end(session)
        if parts.cluster:
            effects.append(link("end_session", session.digest, user.nick, None))
    effects.append(Announce(proto.Left(user.nick), None,
                            publish=publish(parts, "left", user.nick, user.key)))
    return effects


def forget(parts: Parts, user: User) -> Effects:
    """Out of presence (and of the log's lists in use), with nothing said."""
    room = user.room
    parts.presence.remove(user)
    if room is not None:
        parts.log.room_in_use(room.key, bool(room.members))
    parts.log.name_in_use(user.key, False)
    return []


def leave_remote(parts: Parts, user: User) -> Effects:
    """Another node's user is gone (its node said so, or died)."""
    forget(parts, user)
    parts.sessions.unorphan(user)
    return [Announce(proto.Left(user.nick), None)]


# ---- dropping and resuming ----

def detach(parts: Parts, user: User, reason: str, now: float) -> Effects:
    """A session client's connection is gone: it stays present, unseen."""
    conn = user.connection
    log.info("detach %s %s: %s", user.nick, conn.peer if conn else "?", reason)
    if conn is not None:
        conn.drop_held()
        conn.user, user.connection = None, None
    parts.sessions.detach(user.session, now)
    effects: Effects = [Route(conn, None)] if conn is not None else []
    if parts.cluster:  # so that a hello for the nick on any node is told it is held
        effects.append(link("publish", events.RemoteHeld(user.nick, parts.sessions.grace)))
    return effects


def end_session(parts: Parts, session: Session, reason: str) -> Effects:
    """A detached session is over: now the others see the leave."""
    return leave(parts, session.user, reason)


def resume(parts: Parts, conn: Connection, session: Session, after: str | None,
           now: float) -> Effects:
    """Take a session of this node up again on a new connection:
    ``resumed``, then exactly what it missed after ``after``, then live
    traffic; or ``session expired`` (the connection may say a fresh hello)."""
    user = session.user
    missed = missed_here(parts, session, after)
    if missed is None:
        effects: Effects = [Send(conn, SESSION_EXPIRED)]
        if session.detached:
            effects = end_session(parts, session, "could not be resumed") + effects
        return effects
    effects = []
    old = user.connection
    if old is not None:  # the old connection is not known dead yet: it is told
        effects += detach(parts, user, "resumed on another connection", now)
        effects += [Send(old, proto.Error("your session was resumed on another connection",
                                          Code.REPLACED)), Close(old)]
        old.become(State.CLOSING)
    parts.sessions.attach(session)
    attach(conn, user)
    if parts.cluster:
        effects.append(link("publish", events.RemoteHeld(user.nick, 0.0)))
    effects.append(Send(conn, proto.Resumed(len(missed))))
    effects += [Send(conn, entry.packet) for entry in missed]
    effects.append(Route(conn, user.room.key, ids=True))
    log.info("resume %s %s: %d missed", user.nick, conn.peer, len(missed))
    return effects


def missed_here(parts: Parts, session: Session, after: str | None) -> list | None:
    """What a session of this node missed after the id ``after`` (its own
    start when it gives none); None if that cannot be told any more (or
    ``after`` is not an id this server gave), or is more than the output
    bound."""
    user = session.user
    position = parse_position(after) if after is not None else Position(session.start)
    if position is None:
        return None
    if position.node is not None and position.node != parts.node_id:
        missed = parts.log.missed_elsewhere(user.nick, user.room.key, position, session.start,
                                            session.start_stream)
    else:
        missed = parts.log.missed(user.nick, user.room.key, position.number, session.start)
    if missed is not None and sum(entry.size for entry in missed) > parts.limits.max_queue:
        return None
    return missed


# ---- moving and renaming ----

def move(parts: Parts, user: User, room: Room, way: str | None = None) -> Effects:
    """To another room: its old room sees it go, its new one arrive."""
    old = parts.presence.put(user, room)
    parts.log.room_in_use(old.key, bool(old.members))
    parts.log.room_in_use(room.key, True)
    effects: Effects = [Route(user.connection, room.key)] if user.connection else []
    label_old, label_new = label(parts, old.name), label(parts, room.name)
    effects.append(Announce(proto.ExitedRoom(user.nick, label_old, way), old.key,
                            move=Move(user.key, old.key, room.key),
                            publish=publish(parts, "moved", user.nick, old.name, room.name,
                                            way or "")))
    effects.append(Announce(proto.EnteredRoom(user.nick, label_new, way), room.key,
                            same_origin=True))
    if user.session is not None and parts.cluster:
        effects.append(link("record_session", user.session.digest, user.nick, None,
                            room.name))
    return effects


def rename(parts: Parts, user: User, new: str, seq: int = 0) -> Effects:
    """The user is known by another name now; everyone sees it (``seq``: the
    number the cluster link gave the rename when it asked for the nick)."""
    old = user.nick
    parts.log.name_in_use(user.key, False)
    parts.presence.rename(user, new)
    parts.log.name_in_use(user.key, True)
    if user.local:
        parts.log.own_again(user.key)  # ours under this name now (it may have been another
        # user of ours, taken over elsewhere, whose late lines the others refuse)
    effects: Effects = []
    if parts.world_state is not None:
        effects += rename_player(parts, old, new, here=user.local)
    if user.session is not None and parts.cluster:
        effects.append(link("record_session", user.session.digest, new, old, user.room.name))
    effects.append(Announce(proto.NickChanged(old, new), None, seq=seq))
    log.info("nick %s is now %s", old, new)
    return effects


def rename_player(parts: Parts, old: str, new: str, here: bool) -> Effects:
    """World mode: the place and things go with the name (and, for our
    own user in a cluster, in Redis too)."""
    old_key, new_key = proto.name_key(old), proto.name_key(new)
    state = parts.world_state
    state.rename_player(old_key, new_key)
    if not (here and parts.cluster):
        return []
    effects: Effects = [link("save_place", new_key, state.place_of(new_key)),
                        link("save_place", old_key, None)]
    return effects + [link("hold_item", item.id, new_key) for item in state.carried_by(new_key)]


def label(parts: Parts, room: str) -> str:
    """What users see a room called: in world mode, its place's title."""
    if parts.world_state is not None:
        place = parts.world_state.world.places.get(room)
        if place is not None:
            return place.title
    return room


# ---- moderation ----

def kick(parts: Parts, user: User, by: str, reason: str, banned: bool = False,
         seq: int = 0) -> Effects:
    """Everyone hears of it, then the user leaves (no grace: a kicked
    session is over) and the connection closes, after an error that tells
    its client (by its code) not to come back by itself."""
    log.info("kick %s by %s: %s", user.nick, by, proto.quote(reason, 200))
    reason = proto.quote(reason, 300)
    effects: Effects = [Announce(proto.Kicked(user.nick, by, reason), None, seq=seq)]
    conn = user.connection
    if conn is None:
        return effects + leave(parts, user, f"kicked by {by}")
    told = f"you were kicked by {by}" + (f" ({reason})" if reason else "")
    effects.append(Send(conn, proto.Error(told, Code.BANNED if banned else Code.KICKED)))
    effects += leave(parts, user, f"kicked by {by}")
    conn.become(State.CLOSING)
    return effects + [Close(conn), *unpause(conn)]


def kick_reason(reason: str, minutes: int) -> str:
    """What a kick says: the reason, and the ban's length if there is one."""
    if not minutes:
        return reason
    return f"banned for {minutes} minutes" + (f": {reason}" if reason else "")


def ban(parts: Parts, user: User, by: str, minutes: int, reason: str, now: float,
        seq: int = 0) -> Effects:
    """Hold the user's address out (on every node) and kick them."""
    address = user.address or user.nick
    parts.moderation.ban(address, minutes * 60, reason, now)
    log.info("ban %s (%s) for %d minutes by %s: %s", address, user.nick, minutes, by,
             proto.quote(reason, 200))
    effects: Effects = []
    if parts.cluster:
        effects.append(link("ban", address, minutes, reason))
    return effects + kick(parts, user, by, kick_reason(reason, minutes), banned=True, seq=seq)


def taken_message(nick: str, holder: str) -> str:
    if nick.casefold() == holder.casefold():
        return f"nick {nick} is already taken"
    return f"nick {nick} is already taken: it looks like {holder}"


# ---- talking ----

def say_in_room(parts: Parts, conn: Connection,
                message: proto.ChatFrom | proto.EmoteFrom) -> Effects:
    packet = encoded(message)
    if packet is None:
        return [Send(conn, proto.Error("message too long to send", Code.TOO_LONG))]
    room = conn.user.room
    return [Announce(message, room.key, base=packet, publish=publish(
        parts, "publish", events.RemoteSpeech(message.TYPE, message.nick, room.name,
                                              message.message)))]


def encoded(message: proto.Message) -> bytes | None:
    """A rebroadcast's packet, or None if it would not fit in one, in any
    copy of it (a session's has an id and a time, a history's a mark)."""
    try:
        packet = proto.encode(message)
    except proto.PacketTooLarge:
        return None
    if len(packet) - proto.HEADER_SIZE + proto.SESSION_EXTRA > proto.MAX_PAYLOAD:
        return None
    return packet


def log_once(parts: Parts, what: str, node: str) -> None:
    """A complaint about another node, logged once per kind and node."""
    if (what, node) not in parts.complaints and len(parts.complaints) < 1000:
        parts.complaints.add((what, node))
        log.warning("cluster: %s (from %s; logged once)", what, node[:40])


# ---- direct messages ----

def direct(parts: Parts, sender: User | None, sender_nick: str, target: User,
           text: str, publish_call=None) -> Effects:
    """A DM: logged for its two parties, sent to those of them on this node."""
    message = proto.DirectFrom(sender_nick, target.nick, text)
    names = frozenset({proto.name_key(sender_nick), target.key})
    connections = tuple(dict.fromkeys(
        user.connection for user in (target, sender)
        if user is not None and user.connection is not None))
    return [Announce(message, Direct(names, connections), publish=publish_call)]
