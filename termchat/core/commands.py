"""The client's packets: one handler each (``@handles``), registered in the
dispatch table.  A handler gets the components (:class:`actions.Parts`),
the connection (past ``hello``: joined, with its user), the message and
the time, and returns effects; world mode's packets are in worldplay.py.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from termchat.cluster import events as cluster
from termchat.core import actions
from termchat.core.actions import Parts, publish, refuse
from termchat.core.effects import Announce, Close, Effects, Send, link
from termchat.core.eventlog import parse_position
from termchat.core.gate import Connection, State
from termchat.core.moderation import OPERATOR, SERVER
from termchat.core.presence import User
from termchat.core.sessions import session_digest
from termchat.core.tables import handles
from termchat.core import worldplay
from termchat.wire import protocol as proto
from termchat.wire.protocol import Code

MAX_AWAY = 300  # characters of an away message
CLAIMED_NOW = ("another connection is taking up this nick or session right now: try again in "
               "a moment")


def error(conn: Connection, text: str, code: str) -> Effects:
    return [Send(conn, proto.Error(text, code))]


# ---- hello, and sessions taken up again ----

@handles(proto.Hello)
def on_hello(parts: Parts, conn: Connection, hello: proto.Hello, now: float) -> Effects:
    if conn.state is not State.GREETING:
        return error(conn, "already said hello", Code.BAD_PACKET)
    banned = actions.ban_refusal(parts, conn, now)
    if banned is not None:
        return refuse(parts, conn, *banned, now)
    if hello.resume is not None:
        return on_resume(parts, conn, hello, now)
    refusal = parts.moderation.refusal(SERVER, conn.ban_key or conn.peer, hello.password, now)
    if refusal:
        return refuse(parts, conn, *refusal, now)
    key = proto.name_key(hello.nick)
    held = held_message(parts, key, now)
    if held is not None:
        return refuse(parts, conn, held, Code.NICK_HELD, now)
    holder = parts.presence.holder_of(key)
    if holder is not None:
        return refuse(parts, conn, actions.taken_message(hello.nick, holder), Code.NICK_TAKEN, now)
    if parts.cluster:
        conn.become(State.CLAIMING)
        conn.pending = hello
        parts.presence.claims[key] = (conn, hello.nick)
        return [link("claim", conn, hello.nick, key)]
    return worldplay.arrive(parts, conn, hello.nick, hello.session, now)


def on_resume(parts: Parts, conn: Connection, hello: proto.Hello, now: float) -> Effects:
    if not parts.gate.take_resume(conn, now):  # guessing tokens is not free
        return refuse(parts, conn, "too many resumes on one connection", Code.THROTTLED, now)
    session = parts.sessions.find(hello.resume, proto.name_key(hello.nick))
    if session is not None:
        return actions.resume(parts, conn, session, hello.after, now)
    if not parts.cluster:
        return [Send(conn, actions.SESSION_EXPIRED)]
    return resume_elsewhere(parts, conn, hello, now)


def resume_elsewhere(parts: Parts, conn: Connection, hello: proto.Hello,
                     now: float) -> Effects:
    """A session this node does not hold: ask Redis to hand it (and its
    nick) over from whichever node does.  While another connection claims
    the nick (most often the same client's, given up on: a resume in
    flight), whether the session lives is not known yet: try again."""
    key = proto.name_key(hello.nick)
    user = parts.presence.users.get(key)
    position = parse_position(hello.after) if hello.after else None
    if (user is not None and user.local) or \
            position is None or position.node is None:  # not an id another node gave:
        return [Send(conn, actions.SESSION_EXPIRED)]     # nothing is asked of Redis
    if key in parts.presence.claims:
        return refuse(parts, conn, CLAIMED_NOW, Code.THROTTLED, now)
    conn.become(State.CLAIMING)
    conn.pending = hello
    parts.presence.claims[key] = (conn, hello.nick)
    return [link("take_over", conn, session_digest(hello.resume), hello.nick)]


def held_message(parts: Parts, key: str, now: float) -> str | None:
    """Why a nick is taken when it is only held for a session whose
    connection dropped (most often the very user now asking for it)."""
    user = parts.presence.users.get(key)
    until = parts.sessions.held_until(user) if user is not None else None
    if until is None:
        return None
    seconds = max(1, round(until - now))
    return (f"nick {user.nick} is held for a session whose connection dropped; it is free "
            f"in {seconds} seconds unless that session resumes")


@handles(proto.Quit)
def on_quit(parts: Parts, conn: Connection, _: proto.Quit, now: float) -> Effects:
    """Leaving on purpose: the leave now, then the connection closes."""
    effects = actions.leave(parts, conn.user, "quit")
    conn.become(State.CLOSING)
    return effects + [Close(conn)]


# ---- talking ----

@handles(proto.Chat)
def on_chat(parts: Parts, conn: Connection, chat: proto.Chat, now: float) -> Effects:
    return actions.say_in_room(parts, conn, proto.ChatFrom(conn.user.nick, chat.message))


@handles(proto.Emote)
def on_emote(parts: Parts, conn: Connection, emote: proto.Emote, now: float) -> Effects:
    return actions.say_in_room(parts, conn, proto.EmoteFrom(conn.user.nick, emote.message))


@handles(proto.SendDirect)
def on_direct(parts: Parts, conn: Connection, dm: proto.SendDirect, now: float) -> Effects:
    user, target = conn.user, parts.presence.get(dm.to)
    if target is None:
        return error(conn, f"no such user: {proto.quote(dm.to)}", Code.NO_USER)
    if actions.encoded(proto.DirectFrom(user.nick, target.nick, dm.message)) is None:
        return error(conn, "message too long to send", Code.TOO_LONG)
    telling = publish(  # every node logs it, also between two users of this one: a
        parts, "publish", cluster.RemoteDirect(user.nick, target.nick, dm.message))
    # session of either may be resumed elsewhere
    effects = actions.direct(parts, user, user.nick, target, dm.message, telling)
    if target.away and target is not user:
        effects.append(Send(conn, proto.Info(f"{target.nick} is away: {target.away}")))
    return effects


@handles(proto.Away)
def on_away(parts: Parts, conn: Connection, away: proto.Away, now: float) -> Effects:
    """Away with a message; an empty one means back."""
    text = away.message.strip()
    if len(text) > MAX_AWAY:
        return error(conn, f"away message too long (at most {MAX_AWAY} characters)",
                     Code.TOO_LONG)
    conn.user.away = text or None
    effects: Effects = [Send(conn, proto.Info(f"you are away: {text}" if text
                                              else "you are back"))]
    if parts.cluster:
        effects.append(link("publish", cluster.RemoteAway(conn.user.nick, text)))
    return effects


# ---- names and rooms ----

@handles(proto.ChangeNick)
def on_change_nick(parts: Parts, conn: Connection, change: proto.ChangeNick,
                   now: float) -> Effects:
    """A new nick, by the same rules as at hello (a taken one is an error;
    the connection stays).  In a cluster the new nick is claimed and the
    old one freed in one step before anyone sees the change."""
    user = conn.user
    old, new = user.nick, change.nick
    if new == old:
        return error(conn, f"you are already {old}", Code.NICK_TAKEN)
    key = proto.name_key(new)
    holder = parts.presence.holder_of(key)
    if holder is not None and key != user.key:
        return error(conn, actions.taken_message(new, holder), Code.NICK_TAKEN)
    if parts.cluster:
        parts.presence.claims[key] = (conn, new)
        return [link("rename", conn, old, new)]
    return actions.rename(parts, user, new)


@handles(proto.WhoRequest)
def on_who(parts: Parts, conn: Connection, _: proto.WhoRequest, now: float) -> Effects:
    room = conn.user.room
    users = parts.presence.who(room)
    away = {user.nick: user.away for user in users if user.away}
    title = actions.label(parts, room.name)

    def who(part: tuple) -> proto.WhoList:
        marks = {nick: away[nick] for nick in part if nick in away}
        return proto.WhoList(title, part, marks or None)

    def extra(nick: str) -> int:
        return len(json_text(nick)) + 2 + len(json_text(away[nick])) if nick in away else 0

    return [Send(conn, packet) for packet in list_packets(who, [u.nick for u in users], extra)]


@handles(proto.RoomsRequest)
def on_rooms(parts: Parts, conn: Connection, _: proto.RoomsRequest, now: float) -> Effects:
    always = [] if parts.world_state is not None else [parts.presence.lobby]  # no lobby
    rooms = [proto.RoomCount(actions.label(parts, room.name), count)
             for room, count in parts.presence.counts(always)]
    return [Send(conn, packet) for packet in list_packets(proto.RoomList, rooms)]


@handles(proto.EnterRoom)
def on_enter(parts: Parts, conn: Connection, enter: proto.EnterRoom, now: float) -> Effects:
    user = conn.user
    if parts.world_state is not None:
        return error(conn, "there are no rooms to join in this world: walk with go "
                           f"(exits: {worldplay.exits_here(parts, user)})", Code.WORLD)
    if user.room.key == proto.name_key(enter.room):
        return error(conn, f"already in room {user.room.name}", Code.BAD_PACKET)
    return actions.move(parts, user, parts.presence.room_named(enter.room))


@handles(proto.HistoryRequest)
def on_history(parts: Parts, conn: Connection, request: proto.HistoryRequest,
               now: float) -> Effects:
    """Older history of one's room (never DMs), before an id this server
    gave; then whether there is more."""
    position = parse_position(request.before)
    older, more = [], False
    if position is not None and position.node in (None, parts.node_id):
        older, more = parts.log.older(conn.user.room.key, position.number, request.limit)
    return [Send(conn, entry.history_packet()) for entry in older] + \
        [Send(conn, proto.HistoryEnd(more))]


# ---- moderation ----

@handles(proto.BecomeOperator)
def on_become_operator(parts: Parts, conn: Connection, op: proto.BecomeOperator,
                       now: float) -> Effects:
    if parts.moderation.access.op_password is None:
        return error(conn, "this server has no operators", Code.NOT_OPERATOR)
    refusal = parts.moderation.refusal(OPERATOR, conn.ban_key or conn.peer, op.password, now)
    if refusal:
        return error(conn, *refusal)
    conn.user.operator = True
    actions.log.info("operator %s %s", conn.user.nick, conn.peer)
    return [Send(conn, proto.Info("you are an operator now"))]


def target_of(parts: Parts, conn: Connection, nick: str | None,
              what: str) -> tuple[User | None, Effects]:
    """The user an operator's request is about (None, with why not)."""
    if not conn.user.operator:
        return None, error(conn, f"only operators can {what}", Code.NOT_OPERATOR)
    target = parts.presence.get(nick or "")
    if target is None:
        return None, error(conn, f"no such user: {proto.quote(nick or '')}", Code.NO_USER)
    return target, []


@handles(proto.KickRequest)
def on_kick(parts: Parts, conn: Connection, kick: proto.KickRequest, now: float) -> Effects:
    target, refused = target_of(parts, conn, kick.nick, "kick")
    if target is None:
        return refused
    if not target.local:
        return kick_elsewhere(parts, conn.user, target, kick.reason, 0)
    return actions.kick(parts, target, conn.user.nick, kick.reason)


@handles(proto.BanRequest)
def on_ban(parts: Parts, conn: Connection, ban: proto.BanRequest, now: float) -> Effects:
    if ban.nick is None:
        return list_bans(parts, conn, now)
    if ban.minutes is None:
        return error(conn, '"ban" needs field "minutes"', Code.BAD_PACKET)
    target, refused = target_of(parts, conn, ban.nick, "ban")
    if target is None:
        return refused
    if not target.local:
        return kick_elsewhere(parts, conn.user, target, ban.reason, ban.minutes)
    return actions.ban(parts, target, conn.user.nick, ban.minutes, ban.reason, now)


def kick_elsewhere(parts: Parts, by: User, target: User, reason: str,
                   minutes: int) -> Effects:
    """The user is on another node: that node does it; we show it here.  A
    dead node's user in its grace is removed by every node, and its session
    ended here: its token resumes nothing."""
    effects: Effects = [Announce(proto.Kicked(target.nick, by.nick,
                                              actions.kick_reason(reason, minutes)),
                                 None, publish=link("publish", cluster.RemoteKick(
                                     target.nick, by.nick, reason, minutes)))]
    digest = parts.sessions.digest_of_orphan(target)
    if digest is not None:
        effects += actions.leave_remote(parts, target) + [
            link("end_session", digest, target.nick, target.node)]
    return effects


def list_bans(parts: Parts, conn: Connection, now: float) -> Effects:
    if not conn.user.operator:
        return error(conn, "only operators can see the bans", Code.NOT_OPERATOR)
    live = parts.moderation.live_bans(now)
    if not live:
        return [Send(conn, proto.Info("no bans"))]
    return [Send(conn, proto.Info(f"ban: {address} for {ban.minutes_left(now)} more minutes"
                                  + (f" ({ban.reason})" if ban.reason else "")))
            for address, ban in live]


# ---- lists that may not fit in one packet ----

def json_text(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def list_packets(make: Callable[[tuple], proto.Message], items: list,
                 extra: Callable[[Any], int] = lambda item: 0) -> list[bytes]:
    """A list reply (who, rooms) as whole packets: as many items in each as
    fit in 65,535 bytes of UTF-8, every item once, in order.  ``extra`` is
    what an item adds elsewhere in the packet (a who's away message)."""
    room = proto.MAX_PAYLOAD + proto.HEADER_SIZE - len(proto.encode(make(()))) - 16
    packets: list[bytes] = []
    part: list = []
    used = 0
    for item in items:
        size = len(json_text(proto.to_json(item))) + extra(item)
        if part and used + 1 + size > room:
            packets.append(proto.encode(make(tuple(part))))
            part, used = [], 0
        used += size + (1 if part else 0)
        part.append(item)
    packets.append(proto.encode(make(tuple(part))))
    return packets

