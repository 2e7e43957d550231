"""The chat server: one process, one readiness-selection loop.

The listening socket and every client socket sit in one ``selectors``
selector.  Each connection owns an input decoder and an output queue; sending
only ever appends to a queue, and queues are written out, one ``send`` per
socket, at the end of each loop turn.  A broadcast is encoded once and logged
for the turn; at the end of the turn each recipient gets the bytes of every
broadcast meant for it joined into one chunk.  A client whose queue passes
the bound is dropped, so no client can stall the others.

Usage: ``python chat_server.py PORT [--host ADDR] [--max-queue BYTES]
[--redis URL [--reuse-port] [--heartbeat SECONDS]] [--log-level LEVEL]``.
With ``--redis`` the server is one node of a cluster (see chat_cluster.py).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import selectors
import signal
import socket
import sys
import time
from typing import Any, Callable, Iterable, Sequence

import chat_protocol as proto
from chat_args import int_in_range

log = logging.getLogger("chat_server")

DEFAULT_MAX_QUEUE = 1 << 20
RECV_SIZE = 1 << 14      # per readable socket per turn: bounds a turn's fan-out
SEND_BATCH = 1 << 18     # bytes joined for one send
BACKLOG = 4096
KERNEL_SEND_BUFFER = 1 << 18
ACCEPTS_PER_TURN = 512
LINGER_SECONDS = 2.0
LIST_BUDGET = proto.MAX_PAYLOAD - 1024


def announce(message: str, *args: object) -> None:
    """Start and stop lines: logged whatever the level, so that scripts
    (and people) can always see where the server listens."""
    log.log(max(logging.INFO, log.getEffectiveLevel()), message, *args)


class Room:
    """A named set of members; the lobby always exists."""

    __slots__ = ("name", "members")

    def __init__(self, name: str) -> None:
        self.name = name
        self.members: set[Connection] = set()


class Connection:
    """One client socket with its input decoder and output queue."""

    __slots__ = ("sock", "peer", "decoder", "nick", "room", "out", "queued",
                 "log_turn", "log_pos", "want_write", "closing", "deadline",
                 "gone", "claiming", "held")

    def __init__(self, sock: socket.socket, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self.decoder = proto.PacketDecoder()
        self.nick: str | None = None
        self.room: Room | None = None
        self.out: list[bytes] = []
        self.queued = 0
        self.log_turn = -1      # the turn whose broadcast log log_pos refers to
        self.log_pos = 0        # broadcasts of that turn already in self.out
        self.want_write = False
        self.closing = False    # an error was queued; close once it is sent
        self.deadline = 0.0
        self.gone = False
        self.claiming = False   # waiting for the cluster to grant the nick
        self.held: list[bytes] = []  # packets that arrived meanwhile

    def __repr__(self) -> str:
        return f"<{self.nick or '?'} {self.peer}>"


class RemoteUser:
    """A user on another node of the cluster."""

    __slots__ = ("nick", "node", "room")

    def __init__(self, nick: str, node: str, room: str) -> None:
        self.nick, self.node, self.room = nick, node, room


class ChatServer:
    """The chat itself: connections, nicks, rooms and the event loop."""

    def __init__(self, listeners: Sequence[socket.socket],
                 max_queue: int = DEFAULT_MAX_QUEUE, redis_url: str | None = None,
                 heartbeat: float = 1.0) -> None:
        self.listeners = list(listeners)
        self.max_queue = max_queue
        self.selector = selectors.DefaultSelector()
        self.connections: set[Connection] = set()
        self.by_nick: dict[str, Connection] = {}
        self.lobby = Room(proto.LOBBY)
        self.rooms: dict[str, Room] = {proto.name_key(proto.LOBBY): self.lobby}
        self.turn = 0
        self.broadcast_log: list[tuple[Room | None, bytes]] = []
        self.dirty: set[Connection] = set()
        self.overflowed: list[Connection] = []
        self.lingering: set[Connection] = set()
        self.running = False
        self._reserve_fd: int | None = os.open(os.devnull, os.O_RDONLY)
        self._wake_reader, self._wake_writer = socket.socketpair()
        self.remote: dict[str, RemoteUser] = {}      # name_key -> user elsewhere
        self.claims: dict[str, Connection] = {}      # name_key -> hello in progress
        self.cluster = None
        if redis_url:
            from chat_cluster import ClusterLink
            self.cluster = ClusterLink(redis_url, self.wake, heartbeat)
        self.handlers: dict[type, Callable[[Connection, Any], None]] = {
            proto.Hello: self.on_hello,
            proto.Chat: self.on_chat,
            proto.SendDirect: self.on_direct,
            proto.Emote: self.on_emote,
            proto.WhoRequest: self.on_who,
            proto.EnterRoom: self.on_enter,
            proto.RoomsRequest: self.on_rooms,
        }

    # ------------------------------------------------------------------
    # The loop

    def run(self) -> None:
        """Serve until stop() is called or a SIGINT/SIGTERM arrives."""
        for listener in self.listeners:
            listener.setblocking(False)
            self.selector.register(listener, selectors.EVENT_READ, None)
        for sock in (self._wake_reader, self._wake_writer):
            sock.setblocking(False)
        self.selector.register(self._wake_reader, selectors.EVENT_READ, "wake")
        self.running = True
        if self.cluster:
            self.cluster.start()
        try:
            while self.running:
                for key, mask in self.selector.select(self.next_timeout()):
                    self.dispatch(key, mask)
                self.expire_lingering()
                self.flush()
        finally:
            if self.cluster:
                self.cluster.stop()
            self.close_all()

    def dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        conn = key.data
        if conn is None:
            self.accept(key.fileobj)  # type: ignore[arg-type]
        elif conn == "wake":
            self.drain_wakeups()
            if self.cluster:
                self.apply_cluster_events()
        else:
            try:
                if mask & selectors.EVENT_READ and not conn.gone:
                    self.on_readable(conn)
                if mask & selectors.EVENT_WRITE and not conn.gone:
                    self.write(conn)
            except Exception:  # a bug must cost one client, never the server
                log.exception("internal error serving %r; dropping it", conn)
                self.drop(conn, "internal error")

    def next_timeout(self) -> float | None:
        if self.broadcast_log or self.dirty:
            return 0
        if not self.lingering:
            return None
        first = min(conn.deadline for conn in self.lingering)
        return max(0.0, first - time.monotonic())

    def stop(self) -> None:
        """Ask the loop to end; safe from a signal handler or another thread."""
        self.running = False
        self.wake()

    def wake(self) -> None:
        """Make the loop's select return; safe from any thread."""
        try:
            self._wake_writer.send(b"\0")
        except OSError:  # the buffer is full: a wake-up is pending anyway
            pass

    def drain_wakeups(self) -> None:
        try:
            while self._wake_reader.recv(4096):
                pass
        except OSError:
            pass

    def close_all(self) -> None:
        count = len(self.connections)
        for conn in list(self.connections):
            self.discard(conn)
        for sock in self.listeners + [self._wake_reader, self._wake_writer]:
            sock.close()
        self.selector.close()
        if self._reserve_fd is not None:
            os.close(self._reserve_fd)
            self._reserve_fd = None
        announce("server stopped, closed %d connection(s)", count)

    # ------------------------------------------------------------------
    # Accepting, reading and writing

    def accept(self, listener: socket.socket) -> None:
        for _ in range(ACCEPTS_PER_TURN):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE):
                    self.refuse_one(listener)
                else:
                    log.warning("accept failed: %s", exc)
                return
            sock.setblocking(False)
            # Each turn's output goes in one send already: Nagle would only delay it.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A fixed kernel buffer: what a stuck client can cost is this plus
            # --max-queue, rather than whatever autotuning grows it to (4 MiB).
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SEND_BUFFER)
            conn = Connection(sock, format_address(address))
            self.connections.add(conn)
            self.selector.register(sock, selectors.EVENT_READ, conn)
            log.info("connect %s", conn.peer)

    def refuse_one(self, listener: socket.socket) -> None:
        """Out of descriptors: accept and close one connection so the
        listener does not stay readable and spin the loop."""
        log.warning("out of file descriptors; refusing a connection")
        if self._reserve_fd is None:
            return
        os.close(self._reserve_fd)
        try:
            sock, _ = listener.accept()
            sock.close()
        except OSError:
            pass
        self._reserve_fd = os.open(os.devnull, os.O_RDONLY)

    def on_readable(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.drop(conn, f"connection error: {exc.strerror or exc}")
            return
        if not data:
            self.drop(conn, "closed the connection")
            return
        if conn.closing:
            return  # lingering after an error: read and discard
        self.handle_payloads(conn, conn.decoder.feed(data))

    def handle_payloads(self, conn: Connection, payloads: list[bytes]) -> None:
        for index, payload in enumerate(payloads):
            if conn.claiming:
                conn.held.extend(payloads[index:])
                return
            self.handle_payload(conn, payload)
            if conn.closing or conn.gone:
                return

    def write(self, conn: Connection) -> None:
        """Send as much of the queue as the socket takes, in one send."""
        self.dirty.discard(conn)
        if not conn.out:
            self.set_write_interest(conn, False)
            return
        batch, later = take_batch(conn.out)
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        try:
            sent = conn.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as exc:
            self.drop(conn, f"send failed: {exc.strerror or exc}")
            return
        if sent < len(data):
            later.insert(0, memoryview(data)[sent:])  # no copy of shared chunks
        conn.out = later
        conn.queued -= sent
        self.set_write_interest(conn, bool(later))
        if not later and conn.closing:
            self.half_close(conn)

    def set_write_interest(self, conn: Connection, wanted: bool) -> None:
        if conn.want_write != wanted:
            conn.want_write = wanted
            events = selectors.EVENT_READ
            if wanted:
                events |= selectors.EVENT_WRITE
            self.selector.modify(conn.sock, events, conn)

    # ------------------------------------------------------------------
    # Delivery

    def send_to(self, conn: Connection, message: proto.Message | bytes) -> None:
        """Queue one packet for one connection, after its pending broadcasts."""
        packet = message if isinstance(message, bytes) else proto.encode(message)
        self.catch_up(conn)
        self.enqueue(conn, packet)

    def broadcast(self, packet: bytes, room: Room | None = None) -> None:
        """Send to every client in ``room`` (everyone when room is None)."""
        self.broadcast_log.append((room, packet))

    def enqueue(self, conn: Connection, data: bytes) -> None:
        if conn.gone:
            return
        conn.out.append(data)
        conn.queued += len(data)
        if conn.queued > self.max_queue and not conn.closing:
            self.overflowed.append(conn)
        elif not conn.want_write:
            self.dirty.add(conn)

    def pending_broadcasts(self, conn: Connection, start: int) -> bytes:
        room = conn.room
        return b"".join(packet for target, packet in self.broadcast_log[start:]
                        if target is None or target is room)

    def catch_up(self, conn: Connection) -> None:
        """Move the broadcasts of this turn meant for conn into its queue, so
        that what is queued for it next comes after them."""
        if conn.room is None:
            return
        start = conn.log_pos if conn.log_turn == self.turn else 0
        if start < len(self.broadcast_log):
            chunk = self.pending_broadcasts(conn, start)
            if chunk:
                self.enqueue(conn, chunk)
        conn.log_turn = self.turn
        conn.log_pos = len(self.broadcast_log)

    def flush(self) -> None:
        """End of a turn: distribute the broadcast log, drop the clients whose
        queues overflowed (which may broadcast leaves), then write."""
        while self.broadcast_log or self.overflowed:
            self.distribute_broadcasts()
            overflowed, self.overflowed = self.overflowed, []
            for conn in overflowed:
                self.drop(conn, f"output queue passed {self.max_queue} bytes")
        for conn in list(self.dirty):
            if not conn.gone:
                self.write(conn)
        self.dirty.clear()

    def distribute_broadcasts(self) -> None:
        if not self.broadcast_log:
            return
        log_rooms = {room for room, _ in self.broadcast_log}
        if None in log_rooms:
            recipients: Iterable[Connection] = self.by_nick.values()
        else:
            recipients = [c for room in log_rooms for c in room.members]  # type: ignore[union-attr]
        whole_turn: dict[Room | None, bytes] = {}
        turn = self.turn
        for conn in list(recipients):
            if conn.log_turn == turn:
                chunk = self.pending_broadcasts(conn, conn.log_pos)
            else:
                chunk = whole_turn.get(conn.room)
                if chunk is None:
                    chunk = whole_turn[conn.room] = self.pending_broadcasts(conn, 0)
            if chunk:
                self.enqueue(conn, chunk)
        self.broadcast_log = []
        self.turn += 1

    # ------------------------------------------------------------------
    # Ending connections

    def drop(self, conn: Connection, reason: str) -> None:
        """The connection is gone: announce the leave and forget it."""
        if conn.gone:
            return
        if conn.nick is not None:
            log.info("leave %s %s: %s", conn.nick, conn.peer, reason)
        else:
            log.info("disconnect %s: %s", conn.peer, reason)
        self.leave_chat(conn)
        self.discard(conn)

    def discard(self, conn: Connection) -> None:
        conn.gone = True
        self.connections.discard(conn)
        self.lingering.discard(conn)
        self.dirty.discard(conn)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()
        conn.out = []

    def reject(self, conn: Connection, reason: str) -> None:
        """Send an error, then close once it is written (lingering briefly so
        the peer reads the error instead of a reset)."""
        log.info("error %s %s: %s; closing", conn.nick or "?", conn.peer, reason)
        self.send_to(conn, proto.Error(reason))
        self.leave_chat(conn)
        conn.closing = True
        conn.deadline = time.monotonic() + LINGER_SECONDS
        self.lingering.add(conn)

    def half_close(self, conn: Connection) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.discard(conn)

    def expire_lingering(self) -> None:
        if not self.lingering:
            return
        now = time.monotonic()
        for conn in [c for c in self.lingering if c.deadline <= now]:
            self.discard(conn)

    def leave_chat(self, conn: Connection) -> None:
        if conn.nick is None:
            return
        key = proto.name_key(conn.nick)
        del self.by_nick[key]
        self.remove_from_room(conn)
        self.broadcast(proto.encode(proto.Left(conn.nick)))
        if self.cluster:
            self.cluster.left(conn.nick, key)
        conn.nick = None

    # ------------------------------------------------------------------
    # Messages

    def handle_payload(self, conn: Connection, payload: bytes) -> None:
        try:
            message = proto.parse_client_message(payload)
        except proto.MalformedPacket as exc:
            self.reject(conn, str(exc))
            return
        except proto.InvalidMessage as exc:
            if conn.nick is None:
                self.reject(conn, str(exc))
            else:
                log.info("error %s: %s", conn.nick, exc)
                self.send_to(conn, proto.Error(str(exc)))
            return
        if conn.nick is None and not isinstance(message, proto.Hello):
            self.reject(conn, "the first packet must be a hello")
            return
        self.handlers[type(message)](conn, message)

    def on_hello(self, conn: Connection, hello: proto.Hello) -> None:
        if conn.nick is not None or conn.claiming:
            self.send_to(conn, proto.Error("already said hello"))
            return
        key = proto.name_key(hello.nick)
        if key in self.by_nick or key in self.remote or key in self.claims:
            self.reject(conn, f"nick {hello.nick} is already taken")
        elif self.cluster:
            conn.claiming = True
            self.claims[key] = conn
            self.cluster.claim(conn, hello.nick, key)
        else:
            self.complete_hello(conn, hello.nick)

    def complete_hello(self, conn: Connection, nick: str) -> None:
        key = proto.name_key(nick)
        conn.nick = nick
        self.by_nick[key] = conn
        conn.log_turn = self.turn
        conn.log_pos = len(self.broadcast_log)
        self.add_to_room(conn, self.lobby)
        self.broadcast(proto.encode(proto.Joined(nick)))
        if self.cluster:
            self.cluster.joined(nick, self.lobby.name)
        log.info("hello %s %s", nick, conn.peer)

    def on_chat(self, conn: Connection, chat: proto.Chat) -> None:
        self.say_in_room(conn, proto.ChatFrom, "chat", chat.message)

    def on_emote(self, conn: Connection, emote: proto.Emote) -> None:
        self.say_in_room(conn, proto.EmoteFrom, "emote", emote.message)

    def say_in_room(self, conn: Connection, cls: type, kind: str, text: str) -> None:
        packet = self.encode_for(conn, cls(conn.nick, text))
        if packet:
            self.broadcast(packet, conn.room)
            self.tell_cluster({"kind": kind, "nick": conn.nick, "room": conn.room.name,
                               "message": text})

    def on_direct(self, conn: Connection, dm: proto.SendDirect) -> None:
        key = proto.name_key(dm.to)
        target = self.by_nick.get(key)
        remote = self.remote.get(key)
        if target is None and remote is None:
            self.send_to(conn, proto.Error(f"no such user: {dm.to}"))
            return
        to = target.nick if target else remote.nick
        packet = self.encode_for(conn, proto.DirectFrom(conn.nick, to, dm.message))
        if not packet:
            return
        if target is not None:
            self.send_to(target, packet)
        else:
            self.tell_cluster({"kind": "dm", "from": conn.nick, "to": to,
                               "message": dm.message})
        if target is not conn:
            self.send_to(conn, packet)

    def on_who(self, conn: Connection, _: proto.WhoRequest) -> None:
        room = conn.room
        key = proto.name_key(room.name)
        nicks = [c.nick for c in room.members]
        nicks += [u.nick for u in self.remote.values() if proto.name_key(u.room) == key]
        nicks.sort(key=lambda n: (proto.name_key(n), n))
        for part in split_for_packets(nicks, len):
            self.send_to(conn, proto.WhoList(room.name, tuple(part)))

    def on_rooms(self, conn: Connection, _: proto.RoomsRequest) -> None:
        names = {key: room.name for key, room in self.rooms.items()}
        counts = {key: len(room.members) for key, room in self.rooms.items()}
        for user in self.remote.values():
            key = proto.name_key(user.room)
            names.setdefault(key, user.room)
            counts[key] = counts.get(key, 0) + 1
        lobby = proto.name_key(proto.LOBBY)
        order = [lobby] + sorted(key for key in counts if key != lobby and counts[key])
        rooms = [proto.RoomCount(names[key], counts[key]) for key in order]
        for part in split_for_packets(rooms, lambda rc: len(rc.name) + 30):
            self.send_to(conn, proto.RoomList(tuple(part)))

    def on_enter(self, conn: Connection, enter: proto.EnterRoom) -> None:
        key = proto.name_key(enter.room)
        if conn.room is self.rooms.get(key):
            self.send_to(conn, proto.Error(f"already in room {conn.room.name}"))
            return
        self.catch_up(conn)
        old = conn.room
        self.remove_from_room(conn)
        self.broadcast(proto.encode(proto.ExitedRoom(conn.nick, old.name)), old)
        room = self.rooms.get(key)
        if room is None:
            room = self.rooms[key] = Room(enter.room)
        self.add_to_room(conn, room)
        self.broadcast(proto.encode(proto.EnteredRoom(conn.nick, room.name)), room)
        if self.cluster:
            self.cluster.moved(conn.nick, old.name, room.name)

    def encode_for(self, conn: Connection, message: proto.Message) -> bytes | None:
        """Encode a rebroadcast, or tell the sender it would not fit."""
        try:
            return proto.encode(message)
        except proto.PacketTooLarge:
            self.send_to(conn, proto.Error("message too long to send"))
            return None

    def add_to_room(self, conn: Connection, room: Room) -> None:
        conn.room = room
        room.members.add(conn)

    def remove_from_room(self, conn: Connection) -> None:
        room = conn.room
        if room is None:
            return
        room.members.discard(conn)
        conn.room = None
        if not room.members and room is not self.lobby:
            del self.rooms[proto.name_key(room.name)]


    # ------------------------------------------------------------------
    # Cluster: what other nodes say, applied to this node's clients

    def tell_cluster(self, event: dict) -> None:
        if self.cluster:
            self.cluster.publish(event)

    def apply_cluster_events(self) -> None:
        for event in self.cluster.take_events():
            kind, args = event[0], event[1:]
            log.debug("cluster event %s %s", kind, args)
            try:
                getattr(self, "cluster_" + kind)(*args)
            except (KeyError, TypeError, AttributeError) as exc:
                log.warning("cluster: ignoring a malformed %s event: %s", kind, exc)

    def cluster_claimed(self, conn: Connection, nick: str, granted: bool) -> None:
        key = proto.name_key(nick)
        if self.claims.get(key) is conn:
            del self.claims[key]
        if conn.gone or conn.closing:
            if granted:
                self.cluster.left(nick, key)  # nobody will use it after all
            return
        conn.claiming = False
        if not granted:
            self.reject(conn, f"nick {nick} is already taken")
            return
        self.complete_hello(conn, nick)
        held, conn.held = conn.held, []
        self.handle_payloads(conn, held)

    def cluster_remote(self, event: dict) -> None:
        kind, node = event["kind"], event["node"]
        if kind == "join":
            self.remote_join(node, event["nick"], event["room"])
        elif kind == "leave":
            self.remote_leave(event["nick"])
        elif kind == "move":
            self.remote_move(event["nick"], event["old"], event["new"])
        elif kind in ("chat", "emote"):
            room = self.rooms.get(proto.name_key(event["room"]))
            cls = proto.ChatFrom if kind == "chat" else proto.EmoteFrom
            if room is not None:
                self.broadcast(proto.encode(cls(event["nick"], event["message"])), room)
        elif kind == "dm":
            target = self.by_nick.get(proto.name_key(event["to"]))
            if target is not None:
                self.send_to(target, proto.DirectFrom(event["from"], target.nick,
                                                      event["message"]))
        elif kind == "presence":
            self.sync_node(node, event["users"])

    def cluster_snapshot(self, snapshot: dict[str, dict[str, str]]) -> None:
        for node in {user.node for user in self.remote.values()} - set(snapshot):
            self.sync_node(node, {})
        for node, users in snapshot.items():
            self.sync_node(node, users)

    def cluster_node_dead(self, node: str) -> None:
        log.warning("cluster: node %s stopped answering; its users have left", node)
        self.sync_node(node, {})

    def cluster_lost(self, reason: str) -> None:
        self.broadcast(proto.encode(proto.Info(
            "lost contact with the other chat servers; until it is back you are "
            "chatting with the users of this server only")))

    def cluster_restored(self) -> None:
        self.broadcast(proto.encode(proto.Info("back in contact with the other chat servers")))

    def cluster_conflict(self, nick: str) -> None:
        conn = self.by_nick.get(proto.name_key(nick))
        if conn is not None:
            self.reject(conn, f"nick {nick} was taken on another server while this one "
                              "was cut off")

    def sync_node(self, node: str, users: dict[str, str]) -> None:
        """Make our view of a node's users match ``users`` (nick -> room)."""
        present = {proto.name_key(nick) for nick in users}
        for key, user in list(self.remote.items()):
            if user.node == node and key not in present:
                self.remote_leave(user.nick)
        for nick, room in users.items():
            self.remote_join(node, nick, room)

    def remote_join(self, node: str, nick: str, room: str) -> None:
        key = proto.name_key(nick)
        user = self.remote.get(key)
        if user is not None:
            user.node, user.room = node, room
            return
        if key in self.by_nick:
            return  # ours: a stale claim elsewhere, settled by the nick lease
        self.remote[key] = RemoteUser(nick, node, room)
        self.broadcast(proto.encode(proto.Joined(nick)))

    def remote_leave(self, nick: str) -> None:
        user = self.remote.pop(proto.name_key(nick), None)
        if user is not None:
            self.broadcast(proto.encode(proto.Left(user.nick)))

    def remote_move(self, nick: str, old: str, new: str) -> None:
        user = self.remote.get(proto.name_key(nick))
        if user is None:
            return
        user.room = new
        old_room = self.rooms.get(proto.name_key(old))
        if old_room is not None:
            self.broadcast(proto.encode(proto.ExitedRoom(user.nick, old)), old_room)
        new_room = self.rooms.get(proto.name_key(new))
        if new_room is not None:
            self.broadcast(proto.encode(proto.EnteredRoom(user.nick, new)), new_room)


def take_batch(queue: list) -> tuple[list, list]:
    """Split a queue into what one send should try (about SEND_BATCH bytes)
    and the rest, so a long queue is not joined again on every turn."""
    size = 0
    for index, chunk in enumerate(queue):
        size += len(chunk)
        if size >= SEND_BATCH:
            return queue[:index + 1], queue[index + 1:]
    return queue, []


def split_for_packets(items: list, size_of: Callable) -> list[list]:
    """Split a list whose encoding may not fit one packet into parts that do
    (sizes are generous estimates of each item's JSON)."""
    parts: list[list] = [[]]
    used = 0
    for item in items:
        size = 2 * size_of(item) + 8  # escapes can double a name's length
        if used + size > LIST_BUDGET and parts[-1]:
            parts.append([])
            used = 0
        parts[-1].append(item)
        used += size
    return parts


def format_address(address: tuple) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ----------------------------------------------------------------------
# Start-up


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chat_server.py", description="Multi-user chat server.")
    parser.add_argument("port", type=int_in_range("port", 0, 65535), metavar="PORT",
                        help="TCP port to listen on (0 picks a free one)")
    parser.add_argument("--host", metavar="ADDR",
                        help="address to listen on (default: all, IPv4 and IPv6)")
    parser.add_argument("--max-queue", type=int_in_range("size", 1), default=DEFAULT_MAX_QUEUE,
                        metavar="BYTES",
                        help="drop a client whose unsent output passes this (default 1 MiB)")
    parser.add_argument("--redis", metavar="URL",
                        help="join a cluster through Redis, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--reuse-port", action="store_true",
                        help="let several server processes share the port (SO_REUSEPORT)")
    parser.add_argument("--heartbeat", type=float, default=1.0, metavar="SECONDS",
                        help="cluster heartbeat; a node silent for 3 beats is dead (default 1)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        type=str.upper, help="logging level (default INFO)")
    return parser.parse_args(argv)


def open_listeners(host: str | None, port: int,
                   reuse_port: bool = False) -> list[socket.socket]:
    """Listening sockets: one dual-stack socket when no host is given."""
    options = {"backlog": BACKLOG, "reuse_port": reuse_port}
    if host is None:
        if socket.has_dualstack_ipv6():
            try:
                return [socket.create_server(("::", port), family=socket.AF_INET6,
                                             dualstack_ipv6=True, **options)]
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    raise
        return [socket.create_server(("0.0.0.0", port), **options)]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    return [socket.create_server(address[:2], family=family, **options)]


def raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; return the limit."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit: %s", exc)
    return soft


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    raise_open_file_limit()
    try:
        listeners = open_listeners(args.host, args.port, args.reuse_port)
    except (OSError, UnicodeError) as exc:
        where = f"{args.host or '*'}:{args.port}"
        reason = "address already in use" if getattr(exc, "errno", None) == errno.EADDRINUSE \
            else getattr(exc, "strerror", None) or str(exc)
        print(f"chat_server.py: cannot listen on {where}: {reason}", file=sys.stderr)
        return 1
    if args.redis:
        try:
            import redis  # noqa: F401
        except ImportError:
            print("chat_server.py: --redis needs the redis package: "
                  "pip install -e '.[cluster]'", file=sys.stderr)
            return 1
    server = ChatServer(listeners, max_queue=args.max_queue, redis_url=args.redis,
                        heartbeat=args.heartbeat)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: server.stop())
    for listener in listeners:
        announce("listening on %s", format_address(listener.getsockname()))
    server.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
