"""The cluster view: what other nodes say, applied to this node.

Owns what this node knows of the others beyond their users (those are in
presence): which nodes it has seen die, the last event number applied
from each (an event appended twice by a retry is applied once; a number
is recorded only once its event has been vetted), and whether it is
still catching up on the stream after its start.  Vets every event: a
node may speak only for its own users, and a join may take a nick only
from a node that held it and was dead when the nick was claimed.  Applies
node deaths (their users leave, those with a session stay for the grace
as orphans) and a dead node coming back (its users were never gone).

Handlers (``@applies``) get the components, the event and the time and
return effects, or None for an event refused at the door.
"""

from __future__ import annotations

from termchat.cluster import events as cluster
from termchat.core import actions, worldplay
from termchat.core.actions import Parts, SESSION_EXPIRED, log, log_once, refuse
from termchat.core.effects import Announce, Broadcast, Direct, Effects, Move, Send, link
from termchat.core.eventlog import Origin, Position, parse_position
from termchat.core.gate import Connection, State
from termchat.core.presence import User
from termchat.core.sessions import session_digest
from termchat.core.tables import applies
from termchat.wire import protocol as proto
from termchat.wire.protocol import Code

MAX_SEQ_GAP = 1_000_000  # an event number this far past the last is not believed
STORE_AWAY = ("the chat servers' shared store is away: your session is kept; try again in a "
              "moment")
NOT_KNOWN_HERE = ("this server cannot tell what your session missed: it is kept; try again in "
                  "a moment")
DEAD_KEPT = 1000         # dead nodes remembered
DEAD_NODE_WAIT = 10.0    # seconds a node found dead may yet come back with what it said
# (it was paused, or stalled): until then a resume waits for its unwritten events


class ClusterView:
    """This node's view of the other nodes."""

    def __init__(self) -> None:
        self.dead: dict[str, tuple[dict, tuple]] = {}  # nodes seen to die -> (their
        # sessions, the stream's last entry then), oldest first
        self.died_at: dict[str, float] = {}  # ...and since when it is taken for dead here
        self.started: float | None = None  # when our reader started reading the stream
        self.applied: dict[str, int] = {}  # node -> the last event number applied
        self.read: dict[str, int] = {}     # node -> the highest believable number read
        # (applied or refused: what a resume waits for)
        self.catching_up = False           # reading the stream's recent past at start
        self.presence_read: set[str] = set()  # ...and the nodes whose presence it read
        # there: they said who their users were (an event about another is stale)
        self.snapshot: cluster.Snapshot | None = None  # for when the reader gets there
        self.bans_mark: tuple = (0, 0)     # the last snapshot's mark: bans up to there
        # are the ones it gave
        self.data_lost = False             # Redis lost its data; the mark of the
        self.lost_mark: tuple | None = None  # snapshot after it: the stream starts anew there
        self.unburied: dict[str, tuple] = {}  # dead nodes whose mark our reader has not
        # reached (it lags, or this node was paused): their users leave once it has

    def fresh(self, event: cluster.NodeEvent) -> bool:
        """Not a duplicate, and a number that can be believed."""
        if not event.seq:
            return True
        last = self.applied.get(event.node, 0)
        believable = last < event.seq <= last + MAX_SEQ_GAP
        if believable and event.seq > self.read.get(event.node, 0):
            self.read[event.node] = event.seq
        return believable

    def vetted(self, event: cluster.NodeEvent) -> None:
        if event.seq:
            self.applied[event.node] = event.seq

    def died(self, node: str, sessions: dict, mark: tuple, now: float) -> None:
        """A node found dead (again: its first finding counts).  Found within
        DEAD_NODE_WAIT of our own start, it may have died long before: taken
        for dead long enough (a node restarted over and over would
        otherwise never resume the sessions of a node killed before it)."""
        self.dead[node] = (sessions, mark)
        started = self.started if self.started is not None else now
        self.died_at.setdefault(node, now if now >= started + DEAD_NODE_WAIT
                                else started - DEAD_NODE_WAIT)
        while len(self.dead) > DEAD_KEPT:
            self.answers(next(iter(self.dead)))

    def answers(self, node: str) -> None:
        """A node found dead runs again (or is forgotten)."""
        del self.dead[node]
        self.died_at.pop(node, None)
        self.unburied.pop(node, None)


def admit(parts: Parts, event: cluster.NodeEvent) -> tuple[Effects, Origin] | None:
    """Whether another node's event is one to apply (None: seen already, or
    numbered past what the node can have said), and where it comes from;
    with it, presence as of before it when a snapshot waited on it."""
    view = parts.view
    if not view.fresh(event):
        if event.seq > view.applied.get(event.node, 0):
            log_once(parts, "ignoring an event numbered far past the node's last", event.node)
        return None
    stream = cluster.stream_id(event.stream) if event.stream else None
    before = take_snapshot(parts, stream) if stream is not None else []
    heard_from(parts, event.node, stream)
    if stream is not None:
        parts.log.applied(stream)
    return before, Origin(event.node, event.seq, stream)


def heard_from(parts: Parts, node: str, stream: tuple | None) -> None:
    """An event a node wrote after it was found dead shows it runs again
    (it was paused, say): its users were never gone.  One it wrote before
    is only read late (its last words, or the stream's past at start)."""
    dead = parts.view.dead.get(node)
    if dead is not None and (stream is None or stream > dead[1]):
        parts.view.answers(node)
        log.info("cluster: node %s answers again", node[:40])
        for user in parts.presence.of_node(node):
            parts.sessions.unorphan(user, held=True)


def owned_by(parts: Parts, nick: str, node: str) -> User | None:
    """The user ``nick`` if ``node`` is where it is; an event about someone
    else's user is refused (logged once).  While catching up at start, a
    user not known yet is taken to be where the event says (it came before
    what we read), unless we read that node's presence since: that named its
    users, and one left out had left (an event about it read later was
    published before the presence, and passed on after it: a node paused,
    or cut off from Redis, that forgot a session taken up or ended
    meanwhile; taken to be there, it would hold the nick against the node
    that has it now)."""
    user = parts.presence.get(nick)
    view = parts.view
    if user is None and view.catching_up and node not in view.presence_read:
        return appear(parts, node, nick, proto.LOBBY)
    if user is None or user.node != node:
        log_once(parts, "ignoring an event about a nick the node does not own", node)
        return None
    return user


def appear(parts: Parts, node: str, nick: str, room: str, joining: bool = False) -> User:
    """Another node's user, new to us, in ``room`` (``joining``: its join is
    announced next, also while catching up: nothing before it is owed to
    it; otherwise, while catching up, it was there before we read)."""
    user = parts.presence.new_user(nick, node)
    user.since = 0 if parts.view.catching_up and not joining else \
        parts.log.last_number + int(joining)
    user.since_stream = parts.log.stream_cursor if user.since else None
    parts.presence.add(user, parts.presence.room_named(room))
    parts.log.room_in_use(user.room.key, True)
    parts.log.name_in_use(user.key, True)
    return user


def may_take(parts: Parts, nick: str, node: str, replaces: str = "") -> User | None | bool:
    """Whether ``node`` may hold ``nick`` now: True (nobody has it), the
    user it has there already, or False (someone else has it: ours, or a
    node's that was alive when the claim was made)."""
    user = parts.presence.get(nick)
    if user is None:
        return True
    if user.node == node:
        return user
    if user.local or (user.node != replaces and user.node not in parts.view.dead):
        return False
    return True


def join_remote(parts: Parts, node: str, nick: str, room: str, replaces: str = "",
                joining: bool = False) -> Effects | None:
    """``node`` says its user ``nick`` is in ``room`` (a join, ``joining``,
    or its presence): new to us, it arrives; a dead node's user of that
    name is taken over without a word (for the others it never left); None
    when someone else holds the nick."""
    allowed = may_take(parts, nick, node, replaces)
    if allowed is False:
        log_once(parts, "ignoring a node's claim to a nick it does not own", node)
        return None
    worldplay.follow_player(parts, nick, room)
    if allowed is not True:  # the node's own user: where it is now, as it is spelt now
        parts.sessions.unorphan(allowed, held=True)
        if allowed.room.key != proto.name_key(room):
            parts.presence.put(allowed, parts.presence.room_named(room))
        return [] if allowed.nick == nick else actions.rename(parts, allowed, nick)  # (its
        # rename was lost: Redis restarted empty before we read it)
    old = parts.presence.get(nick)
    if old is not None:
        parts.sessions.unorphan(old)
        actions.forget(parts, old)
    appear(parts, node, nick, room, joining=joining or old is None)  # a join over a dead
    # node's user is still a join: nothing before it is owed to it
    return [] if old is not None else [Announce(proto.Joined(nick), None)]


# ---- the link's answers to this node's requests ----

@applies(cluster.Claimed)
def on_claimed(parts: Parts, event: cluster.Claimed, now: float) -> Effects:
    conn, nick = event.token, event.nick
    key = proto.name_key(nick)
    drop_claim(parts, key, conn)
    if conn.state is not State.CLAIMING:
        return [link("release", nick, key)] if event.granted else []  # nobody needs it now
    hello, conn.pending = conn.pending, None
    if not event.granted:
        return refuse(parts, conn, f"nick {nick} is already taken", Code.NICK_TAKEN, now)
    return worldplay.arrive(parts, conn, nick, hello.session, now, event.replaces)


def drop_claim(parts: Parts, key: str, conn: Connection) -> None:
    if parts.presence.claims.get(key, (None,))[0] is conn:
        del parts.presence.claims[key]


@applies(cluster.Renamed)
def on_renamed(parts: Parts, event: cluster.Renamed, now: float) -> Effects:
    conn = event.token
    key = proto.name_key(event.new)
    drop_claim(parts, key, conn)
    user = conn.user
    if conn.state is not State.JOINED or user is None or user.nick != event.old:
        return [link("left", event.new, key)] if event.granted else []  # nobody will use it
    if not event.granted:
        holder = parts.presence.holder_of(key) or event.new
        return [Send(conn, proto.Error(actions.taken_message(event.new, holder),
                                       Code.NICK_TAKEN))]
    return actions.rename(parts, user, event.new, seq=event.seq)


@applies(cluster.TakenOver)
def on_taken_over(parts: Parts, event: cluster.TakenOver, now: float) -> Effects:
    """The session a resume named was handed over to us (from ``old``), or
    there is none: then the connection may say a fresh hello."""
    conn, hello = event.token, event.token.pending
    drop_claim(parts, proto.name_key(event.nick), conn)
    if conn.state is not State.CLAIMING:  # gone meanwhile
        return hand_back(hello, event.old) if event.old is not None else []
    if event.unreachable:  # the session lives on: the client is to try again
        return refuse(parts, conn, STORE_AWAY, Code.THROTTLED, now)
    old = event.old or orphans_node(parts, hello)
    if old is None:
        return expired(parts, conn, now)
    parts.sessions.wait_for_reader(conn, old, event.room, parse_position(hello.after), now)
    return []


def orphans_node(parts: Parts, hello: proto.Hello) -> str | None:
    """Redis knew no such session, but this node keeps it as the session of
    a dead node's user (Redis restarted empty since): that node's id."""
    user = parts.presence.get(hello.nick)
    if user is None or parts.sessions.digest_of_orphan(user) != session_digest(hello.resume):
        return None
    return user.node


def expired(parts: Parts, conn: Connection, now: float) -> Effects:
    """A resume handed to the cluster failed: the connection may say a
    fresh hello, within a new hello deadline."""
    conn.pending = None
    conn.become(State.GREETING)
    parts.gate.restart_greeting(conn, now)
    return [Send(conn, SESSION_EXPIRED)]


def hand_back(hello: proto.Hello, old: str) -> Effects:
    """A session handed over to us that we do not take up after all (its
    connection went, or Redis is away): the session and its nick go back to
    the node that held them, as if nothing had happened."""
    return [link("hand_back", session_digest(hello.resume), hello.nick, old)]


def give_up(parts: Parts, conn: Connection, hello: proto.Hello, old: str, room: str,
            now: float) -> Effects:
    """A session handed over to us that cannot be resumed (what the client
    missed is no longer known here).  Held by a live node, it goes back
    there, and the client is told to try again (its node knows what it
    missed: a fresh hello would be refused while the session holds the
    nick).  Held by a dead one, it ends as a local one would: everyone sees
    its user leave (ours for that moment, so that every node accepts the
    leave), and the connection may say a fresh hello."""
    hello_nick = hello.nick
    user = parts.presence.get(hello_nick)
    if user is not None and not user.local and user.node not in parts.view.dead:
        log.info("resume %s %s: what it missed on node %s is not known here; handed back",
                 hello_nick, conn.peer, old[:40])
        return hand_back(hello, old) + refuse(parts, conn, NOT_KNOWN_HERE, Code.THROTTLED,
                                              now)
    if user is None or user.local:
        user = appear(parts, old, hello_nick, room or proto.LOBBY)
    parts.sessions.unorphan(user)
    user.node = None
    effects: Effects = [link("adopted", user.nick, user.room.name, old),
                        link("end_session", session_digest(hello.resume), user.nick, None)]
    return effects + actions.leave(parts, user, "could not be resumed") + \
        expired(parts, conn, now)


def caught_up(parts: Parts, position: Position, now: float) -> bool:
    """Whether this node has applied everything the client had seen where
    it was: the stream up to the client's cursor, and every event its node
    had published by then (its move to another room, say: replayed by a
    stale view, the client would get the old room's chat; its own lines,
    echoed to it: lost for the others if it went on here first).  A dead
    node's unwritten events never come: once it has been dead for
    DEAD_NODE_WAIT (a paused node is back by then, and passes them on),
    its end in the stream is enough."""
    if parts.log.stream_cursor < position.cursor:
        return False
    node = position.node
    if node is None or node == parts.node_id:
        return True
    view, start = parts.view, parts.log.log_start
    if view.read.get(node, 0) >= position.published or start is None or \
            position.cursor < start:  # (or it saw its last packet before we started
        return True                   # reading: it cannot be resumed here in any case)
    lost = view.lost_mark  # Redis lost what we had not read of it before then
    if lost is not None and position.cursor < lost <= parts.log.stream_cursor:
        return True
    dead = view.dead.get(node)
    return dead is not None and parts.log.stream_cursor >= dead[1] and \
        now >= view.died_at.get(node, now) + DEAD_NODE_WAIT


def adopt(parts: Parts, conn: Connection, old: str, room: str, position: Position,
          now: float) -> Effects:
    """The session (held by ``old``, last in ``room``) is ours now: the user
    goes on here where it was, unseen, with what it missed as this node
    logged it."""
    if conn.state is not State.CLAIMING:  # gone while it waited
        return hand_back(conn.pending, old)
    if not caught_up(parts, position, now):  # the reader never got there (Redis is away, or
        return hand_back(conn.pending, old) + refuse(  # the old node's last events are
            parts, conn, STORE_AWAY, Code.THROTTLED, now)  # not written yet): try later
    hello = conn.pending
    user = parts.presence.get(hello.nick)
    if user is None or user.local:
        user = appear(parts, old, hello.nick, room or proto.LOBBY)
        user.since, user.since_stream = 0, None  # here before we knew it: what the
        # client's position leaves is owed
    missed = parts.log.missed_elsewhere(user.nick, user.room.key, position, user.since,
                                        user.since_stream)
    if missed is None or sum(e.size for e in missed) > parts.limits.max_queue:
        return give_up(parts, conn, hello, old, room, now)  # too long ago
    conn.pending = None
    parts.sessions.unorphan(user)
    user.node = None
    parts.log.own_again(user.key)
    parts.sessions.start(user, user.since, token=hello.resume, start_stream=user.since_stream)
    session = user.session
    actions.attach(conn, user)
    effects: Effects = [Send(conn, proto.Resumed(len(missed)))]
    effects += [Send(conn, entry.packet) for entry in missed]
    effects += [actions.Route(conn, user.room.key, ids=True),
                link("adopted", user.nick, user.room.name, old),
                link("record_session", session.digest, user.nick, None, user.room.name)]
    log.info("resume %s %s from node %s: %d missed", user.nick, conn.peer, old[:40],
             len(missed))
    return effects


# ---- what other nodes did ----

@applies(cluster.RemoteJoin)
def on_remote_join(parts: Parts, event: cluster.RemoteJoin, now: float) -> Effects | None:
    return join_remote(parts, event.node, event.nick, event.room, event.replaces, joining=True)


@applies(cluster.RemoteLeave)
def on_remote_leave(parts: Parts, event: cluster.RemoteLeave, now: float) -> Effects | None:
    user = owned_by(parts, event.nick, event.node)
    return None if user is None else actions.leave_remote(parts, user)


@applies(cluster.RemoteMove)
def on_remote_move(parts: Parts, event: cluster.RemoteMove, now: float) -> Effects | None:
    user = owned_by(parts, event.nick, event.node)
    if user is None:
        return None
    old, new = parts.presence.room_named(event.old), parts.presence.room_named(event.new)
    if user.room is not None and user.room.key != old.key and parts.view.catching_up:
        parts.presence.put(user, old)  # where it was, now that we know
    parts.presence.put(user, new)
    parts.log.room_in_use(old.key, bool(old.members))
    parts.log.room_in_use(new.key, True)
    worldplay.follow_player(parts, user.nick, event.new)
    way = event.way or None
    return [Announce(proto.ExitedRoom(user.nick, actions.label(parts, event.old), way),
                     old.key, move=Move(user.key, old.key, new.key)),
            Announce(proto.EnteredRoom(user.nick, actions.label(parts, event.new), way),
                     new.key)]  # logged even if nobody is in those rooms here: a session
    # may resume here


@applies(cluster.RemoteSpeech)
def on_remote_speech(parts: Parts, event: cluster.RemoteSpeech, now: float) -> Effects | None:
    user = owned_by(parts, event.nick, event.node)
    if user is None:
        return None
    cls = proto.ChatFrom if event.said == proto.ChatFrom.TYPE else proto.EmoteFrom
    message = cls(user.nick, event.message)
    packet = actions.encoded(message)
    if packet is None:
        log_once(parts, "ignoring an event too large to pass on", event.node)
        return None
    if parts.view.catching_up and user.room.key != proto.name_key(event.room):
        parts.presence.put(user, parts.presence.room_named(event.room))
    return [Announce(message, proto.name_key(event.room), base=packet)]


@applies(cluster.RemoteDirect)
def on_remote_direct(parts: Parts, event: cluster.RemoteDirect, now: float) -> Effects | None:
    sender = owned_by(parts, event.sender, event.node)
    if sender is None:
        return None
    target = parts.presence.get(event.to)
    to = target.nick if target is not None else event.to
    message = proto.DirectFrom(sender.nick, to, event.message)
    if actions.encoded(message) is None:
        log_once(parts, "ignoring an event too large to pass on", event.node)
        return None
    names = frozenset({sender.key, proto.name_key(to)})
    here = (target.connection,) if target is not None and target.connection else ()
    return [Announce(message, Direct(names, here))]  # logged all the same: a session may
    # resume here


@applies(cluster.RemoteRename)
def on_remote_rename(parts: Parts, event: cluster.RemoteRename, now: float) -> Effects | None:
    user = owned_by(parts, event.old, event.node)
    if user is None:
        return None
    holder = parts.presence.get(event.new)
    if holder is None or holder is user:
        return actions.rename(parts, user, event.new)
    if holder.local:
        log_once(parts, "ignoring a rename to a nick this node holds", event.node)
        return None
    # Redis gave the nick to the renamer, so its holder here is gone: the user of a
    # node we have not seen die yet (our watch lags, or we are catching up at start)
    return actions.leave_remote(parts, holder) + actions.rename(parts, user, event.new)


@applies(cluster.RemoteKick)
def on_remote_kick(parts: Parts, event: cluster.RemoteKick, now: float) -> Effects | None:
    if owned_by(parts, event.by, event.node) is None:
        return None
    target = parts.presence.get(event.nick)
    if target is None or not target.local:
        kicked = [Announce(proto.Kicked(event.nick, event.by,
                                        actions.kick_reason(event.reason, event.minutes)), None)]
        if target is not None and parts.sessions.digest_of_orphan(target) is not None:
            kicked += actions.leave_remote(parts, target)  # a dead node's: gone everywhere
        return kicked
    if event.minutes:
        return actions.ban(parts, target, event.by, event.minutes, event.reason, now)
    return actions.kick(parts, target, event.by, event.reason)


@applies(cluster.RemoteBan)
def on_remote_ban(parts: Parts, event: cluster.RemoteBan, now: float) -> Effects:
    """A ban for its duration from now; unless it comes before the mark of the
    last snapshot, which gave the bans then in force with their time left
    (a ban read from the stream's past at start would be made longer)."""
    if event.stream and cluster.stream_id(event.stream) <= parts.view.bans_mark:
        return []
    parts.moderation.ban(event.address, event.seconds, event.reason, now)
    return []


@applies(cluster.RemoteAway)
def on_remote_away(parts: Parts, event: cluster.RemoteAway, now: float) -> Effects | None:
    user = owned_by(parts, event.nick, event.node)
    if user is None:
        return None
    user.away = event.message[:300] or None
    return []


@applies(cluster.RemoteHeld)
def on_remote_held(parts: Parts, event: cluster.RemoteHeld, now: float) -> Effects | None:
    user = owned_by(parts, event.nick, event.node)
    if user is None:
        return None
    parts.sessions.held(user, now + event.seconds if event.seconds else None)
    return []


@applies(cluster.SessionGone)
def on_session_gone(parts: Parts, event: cluster.SessionGone, now: float) -> Effects:
    """This node was taken for dead, and one of its sessions was taken up
    elsewhere (or ended) meanwhile: it is not ours any more."""
    user = parts.presence.local(event.nick)
    if user is None or user.session is None:
        return []
    parts.log.drop_user(user.key)
    effects = taken_elsewhere(parts, user)
    actions.forget(parts, user)
    return effects


@applies(cluster.RemotePresence)
def on_remote_presence(parts: Parts, event: cluster.RemotePresence, now: float) -> Effects:
    if parts.view.catching_up:
        parts.view.presence_read.add(event.node)
    dead = parts.view.dead.get(event.node)
    stream = cluster.stream_id(event.stream) if event.stream else None
    if dead is not None and stream is not None and stream <= dead[1]:
        return last_presence(parts, event.node, event.users, dead[0], now)
    return sync_node(parts, event.node, event.users, stream)


def last_presence(parts: Parts, node: str, users: dict[str, str], sessions: dict,
                  now: float) -> Effects:
    """What a node found dead said of its users before it died (read late,
    or in the stream's past at start): those with a session are orphans,
    kept for the grace, the others were gone with it; nobody is told."""
    for nick, room in users.items():
        if nick in sessions and parts.presence.get(nick) is None:
            appear(parts, node, nick, room)
    return bury(parts, node, sessions, now)


@applies(cluster.RemoteTakeover)
def on_remote_takeover(parts: Parts, event: cluster.RemoteTakeover,
                       now: float) -> Effects | None:
    """A session resumed on the sending node: the user is there now.
    Nobody is told anything; if it was ours, we let it go silently.  Ours
    and taken from another node: if its connection is here, that takeover
    is older than ours (ignored); if not, Redis moved the session away from
    us to ``old`` (only a takeover moves it), which died before saying so.
    Taken from us: what we publish of the user past this point is refused
    by the others, and struck here (eventlog: disown)."""
    if event.old == parts.node_id and event.stream:
        parts.log.disown(proto.name_key(event.nick), cluster.stream_id(event.stream))
    user = parts.presence.get(event.nick)
    if user is not None and user.local:
        if event.old != parts.node_id and user.connection is not None:
            log_once(parts, "ignoring a takeover of a session this node holds", event.node)
            return None
        effects = taken_elsewhere(parts, user)
        user.node = event.node
        return effects
    if user is None:
        appear(parts, event.node, event.nick, event.room, joining=True)
        return [Announce(proto.Joined(event.nick), None)]  # new to us: never seen arrive
    parts.sessions.unorphan(user)
    user.node = event.node
    if user.room.key != proto.name_key(event.room):
        parts.presence.put(user, parts.presence.room_named(event.room))
    return []


def taken_elsewhere(parts: Parts, user: User) -> Effects:
    """Our session client resumed on another node: it is that node's user
    now, without a leave (an old connection still open is closed)."""
    log.info("session %s resumed on another node", user.nick)
    effects: Effects = [link("forget", user.nick)]
    session, conn = user.session, user.connection
    if session is not None:
        parts.sessions.end(session)
    if conn is not None:
        conn.user, user.connection = None, None
        conn.become(State.CLOSING)
        effects += [actions.Route(conn, None),
                    Send(conn, proto.Error("your session was resumed on another connection",
                                           Code.REPLACED)), actions.Close(conn)]
    return effects


@applies(cluster.Snapshot)
def on_snapshot(parts: Parts, event: cluster.Snapshot, now: float) -> Effects:
    """Everyone's presence (and the bans) as Redis has them, applied once
    the reader has read the stream as far as the snapshot was taken (what
    came before it, a DM from someone gone since, comes first).  A node
    missing from it may still be on its way back (after a Redis restart):
    its users stay until the link says the node is dead."""
    for address, (seconds, reason) in event.bans.items():
        parts.moderation.ban(address, seconds, reason, now)
    parts.view.bans_mark = max(parts.view.bans_mark, cluster.stream_id(event.mark))
    if parts.view.data_lost:
        parts.view.data_lost, parts.view.lost_mark = False, cluster.stream_id(event.mark)
    parts.view.snapshot = event
    return take_snapshot(parts) + [  # we registered (again): our users' away messages
        link("publish", cluster.RemoteAway(user.nick, user.away))  # (presence does not
        for user in parts.presence.users.values() if user.local and user.away]  # carry them)


def take_snapshot(parts: Parts, upto: tuple | None = None) -> Effects:
    """The snapshot waiting for the reader, once the reader is at its mark:
    before the first event past it (``upto``), or at the reader's progress."""
    snapshot = parts.view.snapshot
    if snapshot is None:
        return []
    mark = cluster.stream_id(snapshot.mark)
    if (upto is None and parts.log.stream_cursor < mark) or (upto is not None and upto <= mark):
        return []
    parts.view.snapshot = None
    effects: Effects = []
    for node, users in snapshot.nodes.items():
        effects += sync_node(parts, node, users)
    return effects


def sync_node(parts: Parts, node: str, users: dict[str, str],
              stream: tuple | None = None) -> Effects:
    """Make our view of a node's users match ``users`` (nick -> room)."""
    heard_from(parts, node, stream)
    present = {proto.name_key(nick) for nick in users}
    effects: Effects = []
    for user in parts.presence.of_node(node):
        if user.key not in present:
            effects += actions.leave_remote(parts, user)
    for nick, room in users.items():
        effects += join_remote(parts, node, nick, room) or []
    return effects


@applies(cluster.NodeDead)
def on_node_dead(parts: Parts, event: cluster.NodeDead, now: float) -> Effects:
    """A node stopped beating: its users leave, except those with a
    session, who stay for the resume grace (they may resume here or on
    any other node)."""
    log.warning("cluster: node %s stopped answering; its users have left, but for %d "
                "with sessions", event.node, len(event.sessions))
    mark = cluster.stream_id(event.mark)
    parts.view.died(event.node, event.sessions, mark, now)
    if parts.log.stream_cursor < mark and not parts.view.catching_up:
        parts.view.unburied[event.node] = mark  # what it said before it died comes first
        return []
    return bury(parts, event.node, event.sessions, now)


def bury_reached(parts: Parts, now: float) -> Effects:
    """The dead nodes whose mark our reader has now reached: their users leave."""
    effects: Effects = []
    for node, mark in list(parts.view.unburied.items()):
        if mark <= parts.log.stream_cursor:
            del parts.view.unburied[node]
            dead = parts.view.dead.get(node)
            if dead is not None:
                effects += bury(parts, node, dead[0], now)
    return effects


def bury(parts: Parts, node: str, sessions: dict, now: float) -> Effects:
    """A dead node's users leave, but for those with a session (orphans for
    the grace); those that are orphans already stay as they are."""
    effects: Effects = []
    for user in parts.presence.of_node(node):
        if parts.sessions.digest_of_orphan(user) is not None:
            continue
        digest = sessions.get(user.nick)
        if not digest or not parts.settings.resume_grace:
            effects += actions.leave_remote(parts, user)
        elif not parts.sessions.orphan(user, digest, now):  # its grace ran out already
            effects += end_orphan(parts, user, digest)
    return effects


def end_orphan(parts: Parts, user: User, digest: str) -> Effects:
    """A dead node's session user did not resume anywhere in time."""
    log.info("leave %s (of node %s): did not come back in time", user.nick, user.node[:40])
    node = user.node
    return actions.leave_remote(parts, user) + [link("end_session", digest, user.nick, node)]


@applies(cluster.Progress)
def on_progress(parts: Parts, event: cluster.Progress, now: float) -> Effects:
    """How far the stream was read, and where our own events landed."""
    parts.log.progress(cluster.stream_id(event.cursor), event.own, event.start)
    effects = take_snapshot(parts) + bury_reached(parts, now)
    if event.start:
        parts.view.catching_up = event.catching_up
        if not event.catching_up:
            parts.view.presence_read.clear()
        if parts.view.started is None:
            parts.view.started = now
    elif event.caught_up and parts.view.catching_up:
        parts.view.catching_up = False
        parts.view.presence_read.clear()
        log.info("cluster: caught up with the stream")
        for node, (sessions, _) in list(parts.view.dead.items()):  # users of nodes that died
            effects += bury(parts, node, sessions, now)  # before we read their events
    return effects


def tell_everyone(text: str) -> Effects:
    """An information line for every user of this node."""
    return [Broadcast(proto.encode(proto.Info(text)))]


@applies(cluster.LinkLost)
def on_link_lost(parts: Parts, event: cluster.LinkLost, now: float) -> Effects:
    return tell_everyone("lost contact with the other chat servers; until it is back you "
                         "are chatting with the users of this server only")


@applies(cluster.LinkRestored)
def on_link_restored(parts: Parts, event: cluster.LinkRestored, now: float) -> Effects:
    return tell_everyone("back in contact with the other chat servers")


@applies(cluster.Undelivered)
def on_undelivered(parts: Parts, event: cluster.Undelivered, now: float) -> Effects:
    return tell_everyone(f"{event.count} messages said here while the other chat servers were "
                         "unreachable could not be passed on to them")


@applies(cluster.DataLost)
def on_data_lost(parts: Parts, event: cluster.DataLost, now: float) -> Effects:
    parts.view.data_lost = True  # the next snapshot says where the stream starts anew
    return tell_everyone("the chat servers' shared store restarted empty; messages sent just "
                         "before may have been lost")


@applies(cluster.Conflict)
def on_conflict(parts: Parts, event: cluster.Conflict, now: float) -> Effects:
    user = parts.presence.local(event.nick)
    if user is not None:
        parts.log.drop_user(user.key)
    if user is None or user.connection is None:
        return actions.leave(parts, user, "nick taken elsewhere") if user else []
    return refuse(parts, user.connection, f"nick {event.nick} was taken on another server "
                  "while this one was cut off", Code.NICK_TAKEN, now)
