"""The chat, with no I/O: a facade over its components.

The transport feeds events in:

- :meth:`ChatCore.connected` when a connection is accepted,
- :meth:`ChatCore.received` with the whole payloads a connection sent,
- :meth:`ChatCore.connection_lost` when it is gone, however it went,
- :meth:`ChatCore.tick` as time passes,
- :meth:`ChatCore.cluster_event` with what the cluster said.

Each goes to the component or handler it concerns, which changes the state
it owns and returns effects (termchat.core.effects); this facade alone
carries effects out, through the outbox (a termchat.core.delivery.Delivery:
send, broadcast, route, close) and, in a cluster, the link (ports.Link).
The components, lowest first: the connection gate (gate.py), presence
(presence.py), the event log (eventlog.py), sessions (sessions.py) and
moderation (moderation.py); above them the actions on users (actions.py),
then the handlers of client packets (commands.py, worldplay.py) and of
cluster events (clusterview.py).  Time comes in with the events; nothing
here reads a clock, opens a socket or starts a thread.

Every entry point is fenced: an exception while handling one connection's
packet costs that connection only, one while applying a cluster event
costs that event only; both are logged once with their traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from termchat.cluster import events as cluster
from termchat.core import clusterview, commands, worldplay  # noqa: F401 (they register handlers)
from termchat.core.actions import Parts, SessionSettings, admit_connection, detach, \
    end_session, leave, mistake, paused, refuse, restore, turned_away
from termchat.core.clusterview import ClusterView, admit, adopt, end_orphan, tell_everyone
from termchat.core.delivery import Outlet
from termchat.core.effects import Announce, Broadcast, Close, Direct, Effects, LinkCall, \
    PauseInput, Route, Send
from termchat.core.eventlog import EventLog, Origin
from termchat.core.gate import Connection, ConnectionGate, Limits, State
from termchat.core.moderation import Access, Moderation
from termchat.core.ports import LINK_CALLS, NO_STORE, Link, Outbox, Saved, Store
from termchat.core.presence import Presence
from termchat.core.sessions import Sessions
from termchat.core.tables import CLUSTER_HANDLERS, PACKET_HANDLERS, check_tables
from termchat.wire import protocol as proto
from termchat.wire.protocol import Code

__all__ = ["Access", "ChatCore", "Limits", "SessionSettings", "State"]

log = logging.getLogger("chat_core")

check_tables(proto.CLIENT_MESSAGES.values(), cluster.EVENT_TYPES)


class ChatCore:
    """The chat, driven by events; the one place effects are carried out."""

    def __init__(self, outbox: Outbox, limits: Limits = Limits(), link: Link | None = None,
                 sessions: SessionSettings = SessionSettings(), wall_offset: float = 0.0,
                 access: Access = Access(), world_state: Any = None,
                 store: Store = NO_STORE) -> None:
        self.outbox = outbox
        self.link = link
        self.wall_offset = wall_offset  # event time + this = Unix time, for "time"
        node_id = link.node_id if link else None
        self.parts = Parts(
            gate=ConnectionGate(limits), presence=Presence(store=store),
            log=EventLog(history=sessions.history, list_bytes=limits.max_queue,
                         node_id=node_id, store=store),
            sessions=Sessions(sessions.resume_grace, limits.max_queue),
            moderation=Moderation(access, store), settings=sessions, limits=limits,
            world_state=world_state, node_id=node_id, view=ClusterView() if link else None)

    def connection(self, outlet: Outlet) -> Connection | None:
        return self.parts.gate.connections.get(outlet)

    def restore(self, saved: Saved, now: float) -> None:
        """Take up what the store kept when the server last stopped."""
        self.apply(restore(self.parts, saved, now), now)

    def tell_everyone(self, text: str, now: float) -> None:
        """An information line for every user of this node (from the transport)."""
        self.apply(tell_everyone(text), now)

    # ------------------------------------------------------------------
    # Entry points

    def connected(self, outlet: Outlet, address: tuple, now: float) -> None:
        """A connection from ``address`` (host, port, ...) was accepted."""
        self.apply(admit_connection(self.parts, outlet, address, now), now)

    def turned_away(self, address: tuple, now: float) -> bytes | None:
        """The error for a connection refused at the door (its rate), or None."""
        refusal = turned_away(self.parts, address, now)
        return proto.encode(refusal) if refusal is not None else None

    def received(self, outlet: Outlet, payloads: list[bytes], now: float) -> None:
        """Whole payloads from one connection, in the order they came."""
        parts = self.parts
        conn = parts.gate.connections.get(outlet)
        if conn is None or conn.state is State.CLOSING:
            return
        if not conn.held and not parts.limits.rate and conn.state is State.JOINED:
            try:  # the common case, kept cheap: no limits to apply
                for payload in payloads:
                    if conn.state is not State.JOINED:
                        return
                    self.handle_payload(conn, payload, now)
            except Exception:
                self.drop_after_bug(conn, now)
            return
        if not parts.gate.hold(conn, payloads):
            self.apply(refuse(parts, conn, "too much sent at once", Code.TOO_LONG, now), now)
            return
        self.process(conn, now)

    def connection_lost(self, outlet: Outlet, reason: str, now: float) -> None:
        """The connection is gone: its user leaves, or (a session) stays unseen."""
        parts = self.parts
        conn = parts.gate.forget(outlet)
        if conn is None:
            return
        user, effects = conn.user, []
        if user is not None and user.session is not None and conn.state is State.JOINED:
            effects = detach(parts, user, reason, now)
        elif user is not None:
            effects = leave(parts, user, reason)
        else:
            log.info("disconnect %s: %s", conn.peer, reason)
        conn.drop_held()
        conn.become(State.GONE)
        self.apply(effects, now)

    def refuse(self, outlet: Outlet, reason: str, code: str, now: float) -> None:
        """The transport refuses a connection (plain text on a TLS port,
        or the reverse): an error, then the close."""
        conn = self.connection(outlet)
        if conn is not None and conn.state is State.GREETING:
            self.apply(refuse(self.parts, conn, reason, code, now), now)

    def tick(self, now: float) -> float | None:
        """Time has passed: connections that never said hello are closed,
        throttled ones read again, graces end.  Returns when the next tick
        is due (None: nothing waits on time)."""
        parts = self.parts
        timeout = parts.limits.hello_timeout
        for conn in parts.gate.silent(now):
            if conn.state is State.GREETING:
                self.fenced(conn, now, refuse, parts, conn,
                            f"no hello within {timeout:g} seconds", Code.NO_HELLO, now)
        for conn in parts.gate.refilled_now(now):
            self.process(conn, now)
        for session in parts.sessions.ended_grace(now):
            self.fenced(None, now, end_session, parts, session, "did not come back in time")
        for user, digest in parts.sessions.orphans_due(now):
            self.fenced(None, now, end_orphan, parts, user, digest)
        self.resume_waiting(now)
        due = [t for t in (parts.gate.next_due(), parts.sessions.next_due()) if t is not None]
        return min(due) if due else None

    def cluster_event(self, event: Any, now: float) -> None:
        """Apply one thing the cluster said; a bad event costs only itself."""
        handler = CLUSTER_HANDLERS.get(type(event))
        if handler is None:
            log.warning("cluster: ignoring an event of unknown type %s", type(event).__name__)
            return
        log.debug("cluster event %r", event)
        parts, origin = self.parts, None
        try:
            if isinstance(event, cluster.NodeEvent):
                admitted = admit(parts, event)
                if admitted is None:
                    return
                before, origin = admitted
                self.apply(before, now)
            elif isinstance(event, cluster.NodeDead):
                origin = Origin(None, cause=event.node)
            effects = handler(parts, event, now)
            if effects is None:
                return  # refused at the door: its number is not taken as seen
            if isinstance(event, cluster.NodeEvent):
                parts.view.vetted(event)
            self.apply(effects, now, origin)
        except Exception:
            log.exception("cluster: internal error applying %s; ignored", type(event).__name__)
        self.after_event(event, now)

    def after_event(self, event: Any, now: float) -> None:
        """What waited on a cluster event: input held while a nick was
        claimed, resumes waiting for the reader, hellos held at start."""
        token = getattr(event, "token", None)
        if isinstance(token, Connection) and token.held and token.state is State.JOINED:
            self.process(token, now)
        if self.parts.sessions.waiting:
            self.resume_waiting(now)
        if isinstance(event, cluster.Progress):
            if event.caught_up:
                for conn in list(self.parts.gate.connections.values()):
                    if conn.held and conn.state is State.GREETING:
                        self.process(conn, now)

    # ------------------------------------------------------------------
    # Packets

    def process(self, conn: Connection, now: float) -> None:
        """Handle what the client sent, as far as its state and its tokens
        allow; while anything is left, its socket is not read (so TCP
        pushes back on the sender and nothing is lost)."""
        parts, held = self.parts, conn.held
        view = parts.view
        try:
            while held:
                state = conn.state
                if state is State.CLAIMING or (state is State.GREETING and view is not None
                                               and view.catching_up):
                    break
                if state is not State.GREETING and state is not State.JOINED:
                    held.clear()
                    break
                if state is State.JOINED and not parts.gate.take_token(conn, now):
                    break
                payload = held.popleft()
                conn.held_bytes -= len(payload)
                self.handle_payload(conn, payload, now)
        except Exception:
            self.drop_after_bug(conn, now)
        if conn.held is held and not held:
            conn.drop_held()
        self.apply(paused(conn, bool(conn.held) and conn.state is not State.GONE), now)

    def handle_payload(self, conn: Connection, payload: bytes, now: float) -> None:
        parts = self.parts
        try:
            message = proto.parse_client_message(payload)
        except proto.MalformedPacket as exc:
            self.apply(refuse(parts, conn, str(exc), Code.BAD_PACKET, now), now)
            return
        except proto.InvalidMessage as exc:
            if conn.state is State.GREETING:
                self.apply(refuse(parts, conn, str(exc), exc.code, now), now)
            else:
                mistake(conn, str(exc))
                self.send(conn, proto.Error(str(exc), exc.code))
            return
        if conn.state is State.GREETING and type(message) is not proto.Hello:
            self.apply(refuse(parts, conn, "the first packet must be a hello",
                              Code.BAD_PACKET, now), now)
            return
        self.apply(PACKET_HANDLERS[type(message)](parts, conn, message, now), now)

    def resume_waiting(self, now: float) -> None:
        """Take up the sessions handed over to us once our stream reader
        has read what their clients saw (or after a short wait)."""
        parts = self.parts
        for conn, old, room, position in parts.sessions.ready_resumes(
                now, lambda position: clusterview.caught_up(parts, position, now)):
            if self.fenced(conn, now, adopt, parts, conn, old, room, position, now):
                self.process(conn, now)

    def fenced(self, conn: Connection | None, now: float, action, *args) -> bool:
        """Carry out what an action returns; a bug drops that connection only."""
        try:
            self.apply(action(*args), now)
            return True
        except Exception:
            if conn is None:
                log.exception("internal error; ignored")
            else:
                self.drop_after_bug(conn, now)
            return False

    def drop_after_bug(self, conn: Connection, now: float) -> None:
        """A handler raised: log it once and drop that client only."""
        log.exception("internal error serving %r; dropping it", conn)
        self.outbox.close(conn.outlet)
        self.connection_lost(conn.outlet, "internal error", now)

    # ------------------------------------------------------------------
    # Carrying out effects

    def apply(self, effects: Effects, now: float, origin: Origin | None = None) -> None:
        """Carry out effects in order (``origin``: where the cluster event
        they come from came from)."""
        seq = 0
        outbox = self.outbox
        for effect in effects:
            kind = type(effect)
            if kind is Announce:
                seq = self.announce(effect, now, origin, seq)
            elif kind is Send:
                self.send(effect.connection, effect.packet)
            elif kind is Route:
                outbox.move(effect.connection.outlet, effect.room, effect.ids)
            elif kind is Close:
                outbox.close(effect.connection.outlet)
            elif kind is PauseInput:
                outbox.pause_input(effect.connection.outlet, effect.paused)
            elif kind is Broadcast:
                outbox.broadcast(effect.packet, effect.room)
            elif kind is LinkCall:
                self.call(effect)
            else:
                raise TypeError(f"not an effect: {effect!r}")

    def announce(self, effect: Announce, now: float, origin: Origin | None,
                 previous: int) -> int:
        """Number, log and deliver a chat event; returns the number it was
        published under (ours), for an announce that follows it."""
        parts = self.parts
        seq = effect.seq
        if effect.publish is not None:
            seq = self.call(effect.publish)
        elif effect.same_origin:
            seq = previous
        if origin is None and seq:
            origin = Origin(parts.node_id, seq)
        message, target = effect.message, effect.target
        base = effect.base or proto.encode(message)
        direct = type(target) is Direct
        move = effect.move
        entry = parts.log.record(message, target.names if direct else target, base,
                                 round(now + self.wall_offset, 3),
                                 (move.mover, move.old, move.new) if move else None, origin,
                                 self.link.published_count if self.link else 0)
        sessions = parts.sessions
        if direct:
            for conn in target.connections:
                user = conn.user
                self.send(conn, entry.packet if user and user.session else base)
        else:
            self.outbox.broadcast(base, target, entry.packet if sessions.attached else None)
        if sessions.any_detached:
            for session in sessions.reached(entry):
                self.apply(end_session(parts, session, "missed more than the output bound"),
                           now)
        return seq

    def send(self, conn: Connection, message: proto.Message | bytes) -> None:
        packet = message if isinstance(message, bytes) else proto.encode(message)
        self.outbox.send(conn.outlet, packet)

    def call(self, call: LinkCall) -> Any:
        if call.name not in LINK_CALLS:
            raise TypeError(f"the link has no call {call.name!r}")
        if self.link is None:
            return 0
        return getattr(self.link, call.name)(*call.args)
