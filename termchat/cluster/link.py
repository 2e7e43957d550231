"""The link between one chat server process and the cluster, over Redis.

The event loop never touches Redis.  It calls :class:`ClusterLink`'s
methods, which only queue work (small command objects), and it drains
:meth:`ClusterLink.take_events` (small event objects) when the link pokes
it through the loop's wake-up socket.  Two threads do the Redis I/O: a
writer (nick claims, presence, appending events, heartbeats, noticing dead
nodes) and a reader (reading the event stream).

Redis keys (``P`` is the prefix, ``chat:`` by default):

- ``P nodes``: set of node ids in the cluster.
- ``P alive:ID``: a node's heartbeat, expiring after three beats.
- ``P member:ID``: a node was in the cluster within STREAM_SECONDS (its
  events may still be in the stream, read late: after it stopped, or after
  another node took it for dead), refreshed with each heartbeat.
- ``P users:ID``: hash nick -> room of the node's users.
- ``P nick:KEY``: the node id owning a nick (KEY: the name key).  A claim
  succeeds when the nick is free, already ours, or owned by a node whose
  heartbeat has expired, so a dead node's nicks free themselves.
- ``P stream``: the event stream (XADD with an approximate MAXLEN); each
  entry's field ``e`` is JSON with ``node`` and ``kind``.  Every node reads
  it from the last ID it applied, so an outage loses nothing the stream
  still holds.
- ``P epoch``: a random value set once per Redis data set: a node that
  finds another epoch on reconnection knows Redis lost its data.
- ``P session:HASH``: a session (HASH: a digest of its token, never the
  token): the nick, its name key and the node holding it.  ``P
  sessions:ID``: hash nick -> HASH of a node's sessions, so that when the
  node dies the survivors keep those users present for the resume grace.
  A resume on another node takes the session (and its nick) over in one
  step (scripts.TAKEOVER_SCRIPT) and says so with a ``takeover`` event.
- World mode: ``P world:items`` (item -> ``place:ID`` or ``held:PLAYER``)
  and ``P world:players`` (player -> place).  Taking an item is decided
  by Redis in one step (scripts.TAKE_SCRIPT), so two users on two nodes cannot
  both take it; every change is also an ``item`` event for the others.

Guarantees.  Each node notices on its own when a node it knows stops
beating (every node checks every node it has heard of, each beat), so
every survivor announces each of a dead node's users once.  A node cut
off from Redis keeps serving its users, buffers what they say (at most
BUFFER_EVENTS events and BUFFER_SECONDS seconds, then it tells them what
was dropped) and appends it when Redis is back, then reads what it
missed: per-sender order, each event once.  Events read from Redis are
validated like client packets and those from unregistered nodes ignored;
the core vets the rest (a node speaks only for its own users) and drops
an event appended twice by a retry.  A node that starts reads the
stream's recent past first (``history_seconds``), so that it can resume
the sessions of a node that died, or of the process it replaces.

The commands the writer runs are in commands.py, the Lua scripts in
scripts.py, the events in events.py.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.parse
import uuid
from collections import deque
from typing import Any, Callable, Iterator

from termchat.cluster import scripts
from termchat.cluster.commands import (ClaimNick, ClaimOwn, ClearPresence, Command, EndSession,
                                       HandBack, Publish,
                                       RecordSession, RenameNick, SaveBan, SaveWorld, SetPresence,
                                       STOP_WAIT, Stop, StopLink, TakeItem, TakeOver, PLACE,
                                       held_by,
                                       lying_in, session_record)
from termchat.cluster.events import (Conflict, DataLost, LinkLost, LinkRestored, NodeDead,
                                     NodeEvent, Progress, RemoteBan, RemoteItem, RemoteJoin,
                                     RemoteLeave, RemoteMove, RemotePresence, RemoteRename,
                                     RemoteTakeover, SessionGone, Snapshot, Undelivered,
                                     parse_node_event, stream_id)
from termchat.wire import protocol as proto

log = logging.getLogger("chat_cluster")

MAX_BACKOFF = 2.0
STREAM_MAXLEN = 100_000     # events kept in the stream (approximately)...
STREAM_SECONDS = 600        # ...for at most this long...
MEMBERS_KEPT = 10_000       # nodes the reader remembers as members (then it asks again)
STREAM_BYTES = 256 << 20    # ...and at most this many bytes of them
HISTORY_SECONDS = 90.0      # what a node reads of the stream's past when it starts
READ_COUNT = 1000           # events taken per XREAD
BUFFER_EVENTS = 10_000      # kept while Redis is away...
BUFFER_SECONDS = 60.0       # ...for at most this long



class ClusterLink:
    """Queues work for Redis and hands back what the cluster says (the
    event classes above, read with take_events)."""

    def __init__(self, url: str, wake: Callable[[], None], heartbeat: float = 1.0,
                 prefix: str = "chat:", history_seconds: float = HISTORY_SECONDS) -> None:
        import redis  # the optional 'cluster' extra

        self._redis_module = redis
        self.url = url
        self.shown_url = masked_url(url)
        self.node_id = uuid.uuid4().hex[:12]
        self.heartbeat = heartbeat
        self.ttl_ms = int(heartbeat * 3000)
        self.prefix = prefix
        self.client = None                 # the writer's connection
        self.users: dict[str, str] = {}    # our users: nick -> room (writer's copy)
        self.sessions: dict[str, str] = {}  # ...those with sessions: nick -> digest
        self.buffer: deque[tuple[float, str]] = deque()  # events kept while Redis is away
        self.dropped = 0                   # ...and how many of them were given up
        self.watched: set[str] = set()     # nodes heard of: each beat checks they live
        self.registered: set[str] = set()  # nodes in the node set, as last read
        self.members: set[str] = set()     # other nodes whose member key the reader saw
        self.dead_marks: dict[str, str] = {}  # nodes found dead -> the stream's end then
        self.epoch: str | None = None      # the Redis data set we know
        self.cursor: str | None = None     # the last stream ID read (the reader's)
        self.restart_reading = False       # Redis lost its data: read the new stream from 0
        self.grace_until = 0.0             # after a reconnection, nodes may still be coming back
        self.last_beat = 0.0               # when our last heartbeat was answered
        self.history_ms = int(history_seconds * 1000)  # the stream's past read at start
        self.catch_up_end: tuple[int, int] | None = None  # ...up to here (the reader's)
        self.sizes: deque[tuple[str, int]] = deque()  # stream entries read and their sizes
        self.stream_bytes = 0              # ...together (the reader's)
        self.trim_to: str | None = None    # the stream holds too many bytes: trim to here
        self._logged: set[tuple[str, str]] = set()
        self._published = 0                # our events so far (the event loop's count)
        self._in_flight: list[Command] = []
        self._wake = wake
        self._outbox: queue.Queue[Command] = queue.Queue()
        self._inbox: deque = deque()
        self._running = False
        self._connected = False
        self._was_lost = False
        self._state_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # ---- called from the event loop: queue work, take events ----

    def start(self) -> None:
        self._running = True
        for target, name in ((self._write_loop, "redis-writer"),
                             (self._read_loop, "redis-reader")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Leave the cluster cleanly and end the threads.  What this node's
        users said while Redis was away was echoed to them: if Redis is
        still away, the writer waits for it (up to STOP_WAIT) to pass it on."""
        self._outbox.put(Stop())  # the writer deregisters, then ends
        if self._threads:
            self._threads[0].join(timeout=STOP_WAIT + 3)
        self._running = False  # the reader (a daemon) ends at its next poll

    @property
    def published_count(self) -> int:
        """How many events this node has published (the last one's seq)."""
        return self._published

    def claim(self, token: Any, nick: str, key: str) -> None:
        self._outbox.put(ClaimNick(token, nick, key))

    def release(self, nick: str, key: str) -> None:
        """A nick claimed for nothing (its connection went meanwhile)."""
        self._outbox.put(ClearPresence(nick, key))

    def record_session(self, digest: str, nick: str, old: str | None = None,
                       room: str | None = None) -> None:
        self._outbox.put(RecordSession(digest, nick, old, room))

    def end_session(self, digest: str, nick: str, node: str | None = None) -> None:
        self._outbox.put(EndSession(digest, nick, node or self.node_id))

    def take_over(self, token: Any, digest: str, nick: str) -> None:
        self._outbox.put(TakeOver(token, digest, nick))

    def adopted(self, nick: str, room: str, old: str) -> int:
        """We resumed a session another node held: presence, the nick (ours
        already, unless Redis lost it), then the event."""
        self._outbox.put(SetPresence(nick, room))
        self._outbox.put(ClaimOwn(nick))
        return self.publish(RemoteTakeover(nick, old, room))

    def hand_back(self, digest: str, nick: str, old: str) -> None:
        self._outbox.put(HandBack(digest, nick, old))

    def take_item(self, token: Any, item: str, place: str, player: str) -> int:
        self._published += 1
        wire = RemoteItem(item, "", player).to_wire(self.node_id, self._published)
        self._outbox.put(TakeItem(token, item, place, player, wire))
        return self._published

    def put_item(self, item: str, place: str) -> int:
        self._outbox.put(SaveWorld(item, lying_in(place), "items"))
        return self.publish(RemoteItem(item, place, ""))

    def hold_item(self, item: str, player: str) -> None:
        """Who holds an item, in Redis only (the others learn it otherwise)."""
        self._outbox.put(SaveWorld(item, held_by(player), "items"))

    def save_place(self, player: str, place: str | None) -> None:
        self._outbox.put(SaveWorld(player, place, "players"))

    def forget(self, nick: str) -> None:
        """A user of ours was taken over elsewhere: out of our presence and
        sessions, silently (the nick is the new node's already)."""
        self._outbox.put(ClearPresence(nick, proto.name_key(nick)))
        self._outbox.put(EndSession(None, nick, self.node_id))

    def rename(self, token: Any, old: str, new: str) -> int:
        self._published += 1
        wire = RemoteRename(old, new).to_wire(self.node_id, self._published)
        self._outbox.put(RenameNick(token, old, new, wire, self._published))
        return self._published

    def joined(self, nick: str, room: str, replaces: str = "") -> int:
        self._outbox.put(SetPresence(nick, room))
        return self.publish(RemoteJoin(nick, room, replaces))

    def left(self, nick: str, key: str) -> int:
        """The leave is in the stream before the nick is free, so that a
        join of it by anyone else comes after the leave in every node's
        reading (the pipeline runs the commands in order)."""
        seq = self.publish(RemoteLeave(nick))
        self._outbox.put(ClearPresence(nick, key))
        return seq

    def moved(self, nick: str, old: str, new: str, way: str = "") -> int:
        self._outbox.put(SetPresence(nick, new))
        return self.publish(RemoteMove(nick, old, new, way))

    def ban(self, address: str, minutes: int, reason: str) -> int:
        """A ban for every node, also those that start later (Redis keeps it
        until it ends)."""
        self._outbox.put(SaveBan(address, minutes * 60.0, reason))
        return self.publish(RemoteBan(address, minutes * 60.0, reason))

    def publish(self, event: NodeEvent) -> int:
        self._published += 1
        self._outbox.put(Publish(event.to_wire(self.node_id, self._published)))
        return self._published

    def take_events(self) -> list:
        events = []
        while self._inbox:
            events.append(self._inbox.popleft())
        return events

    # ---- shared by the threads and the commands ----

    def key(self, name: str) -> str:
        return self.prefix + name

    def hand_over(self, event: Any) -> None:
        self._inbox.append(event)
        self._wake()

    def append(self, pipe, wire: str) -> None:
        """Add an event to the stream, letting entries older than
        STREAM_SECONDS go (by Redis's clock, approximately)."""
        oldest = f"{max(0, self.redis_ms() - STREAM_SECONDS * 1000)}-0"
        pipe.xadd(self.key("stream"), {"e": wire}, minid=oldest, approximate=True)

    def redis_ms(self) -> int:
        """Milliseconds by Redis's clock, as the last stream entry read says
        (this process's clock until one is read)."""
        cursor = self.cursor
        return stream_id(cursor)[0] if cursor and cursor != "0-0" else int(time.time() * 1000)

    def keep_for_later(self, wire: str) -> None:
        """Redis is away: keep an event for it, within the buffer's bounds."""
        now = time.monotonic()
        self.buffer.append((now, wire))
        while self.buffer and (len(self.buffer) > BUFFER_EVENTS
                               or self.buffer[0][0] < now - BUFFER_SECONDS):
            self.buffer.popleft()
            self.dropped += 1

    def log_once(self, what: str, detail: str) -> None:
        if (what, detail) not in self._logged and len(self._logged) < 1000:
            self._logged.add((what, detail))
            log.warning("cluster: %s: %s (logged once)", what, detail)

    def _connect(self):
        client = self._redis_module.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=5)
        client.ping()
        client.claim_nick = client.register_script(scripts.CLAIM_SCRIPT)
        client.rename_nick = client.register_script(scripts.RENAME_SCRIPT)
        client.release_nick = client.register_script(scripts.RELEASE_SCRIPT)
        client.take_over = client.register_script(scripts.TAKEOVER_SCRIPT)
        client.hand_back = client.register_script(scripts.HAND_BACK_SCRIPT)
        client.end_session = client.register_script(scripts.END_SESSION_SCRIPT)
        client.take_item = client.register_script(scripts.TAKE_SCRIPT)
        return client

    # ---- the writer thread ----

    def _write_loop(self) -> None:
        backoff = 0.1
        next_beat = 0.0
        while self._running:
            try:
                if self.client is None:
                    self.client = self._connect()
                    self._register()
                    backoff = 0.1
                    next_beat = time.monotonic() + self.heartbeat
                if time.monotonic() - next_beat > self.ttl_ms / 1000:
                    self._beat()  # we were stopped: be registered again before writing
                    next_beat = time.monotonic() + self.heartbeat
                timeout = max(0.0, next_beat - time.monotonic())
                self._process(self._next_commands(timeout))
                if time.monotonic() >= next_beat:
                    self._beat()
                    next_beat = time.monotonic() + self.heartbeat
            except StopLink:
                return
            except Exception as exc:  # a dead link thread would silently split the chat
                self._log_unexpected(exc)
                if self.client is None and not self._connected and backoff == 0.1:
                    log.warning("cluster: cannot reach Redis at %s (%s); retrying",
                                self.shown_url, exc)
                self.client = None
                self._went_down(str(exc))
                in_flight, self._in_flight = self._in_flight, []
                for command in in_flight:  # Redis may or may not have them: redo
                    command.while_down(self)
                if self._drain_while_down(backoff):
                    return
                backoff = min(MAX_BACKOFF, backoff * 2)

    def _next_commands(self, timeout: float) -> list[Command]:
        try:
            commands = [self._outbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                commands.append(self._outbox.get_nowait())
            except queue.Empty:
                return commands

    def _process(self, commands: list[Command]) -> None:
        """Run a batch of commands in one pipeline, then let each read its
        own results (Stop raises StopLink once the rest are done)."""
        if not commands:
            return
        pipe = self.client.pipeline(transaction=False)
        self._in_flight = commands
        counts = [command.queue(self, pipe) for command in commands]
        results: Iterator = iter(pipe.execute())
        self._in_flight = []
        for command, count in zip(commands, counts):
            command.answer(self, [next(results) for _ in range(count)])

    def _register(self) -> None:
        """Join (or rejoin) the cluster: heartbeat, presence, nick claims,
        then what was kept while Redis was away, then everyone's presence."""
        client, node = self.client, self.node_id
        lost = self._check_epoch()
        self._drop_sessions_gone(lost)
        client.set(self.key("alive:" + node), "1", px=self.ttl_ms)
        client.set(self.key("member:" + node), "1", ex=STREAM_SECONDS)
        client.sadd(self.key("nodes"), node)
        users_key = self.key("users:" + node)
        client.delete(users_key)
        if self.users:
            client.hset(users_key, mapping=dict(self.users))
        if self.sessions:
            client.hset(self.key("sessions:" + node), mapping=dict(self.sessions))
            for nick, digest in self.sessions.items():
                client.hset(self.key("session:" + digest),
                            mapping=session_record(nick, node, self.users.get(nick)))
        for nick in list(self.users):
            if client.claim_nick(keys=[self.key("nick:" + proto.name_key(nick))],
                                 args=[node, self.key("alive:")]) is None:
                self.hand_over(Conflict(nick))
        pipe = client.pipeline(transaction=False)
        self.append(pipe, RemotePresence(dict(self.users)).to_wire(node))  # unnumbered:
        # presence may be applied twice
        for _, wire in self.buffer:
            self.append(pipe, wire)
        pipe.execute()
        self.buffer.clear()
        if self.dropped:
            self.hand_over(Undelivered(self.dropped))
            self.dropped = 0
        self.give_grace()
        last = client.xrevrange(self.key("stream"), count=1)
        self.hand_over(Snapshot(self.read_presence(), self.read_bans(),
                                last[0][0].decode() if last else "0-0"))
        with self._state_lock:
            self._connected = True
            if self._was_lost:
                self._was_lost = False
                self.hand_over(LinkRestored())
        log.info("cluster: node %s registered with %s", node, self.shown_url)

    def _check_epoch(self) -> bool:
        """Notice a Redis that lost its data since we last saw it (True)."""
        client = self.client
        client.set(self.key("epoch"), uuid.uuid4().hex, nx=True)
        epoch = client.get(self.key("epoch")).decode()
        lost = self.epoch is not None and epoch != self.epoch
        if lost:
            log.warning("cluster: Redis lost its data; reading presence again")
            self.restart_reading = True
            self.hand_over(DataLost())
        self.epoch = epoch
        return lost

    def _drop_sessions_gone(self, redis_lost: bool) -> None:
        """Before registering again (after an outage, or a pause that made
        the others take us for dead): sessions of ours taken up on another
        node meanwhile, or ended there, are not ours to claim any more."""
        if not self.sessions:
            return
        pipe = self.client.pipeline(transaction=False)
        nicks = list(self.sessions)
        for nick in nicks:
            pipe.hget(self.key("session:" + self.sessions[nick]), "node")
        for nick, holder in zip(nicks, pipe.execute()):
            holder = holder.decode() if holder is not None else None
            if holder == self.node_id or (holder is None and redis_lost):
                continue
            del self.sessions[nick]
            self.users.pop(nick, None)
            self.hand_over(SessionGone(nick))

    def _beat(self) -> None:
        """Refresh our heartbeat; notice nodes whose heartbeat expired.

        Every node checks every node it has heard of, so each survivor
        notices a death itself.  If Redis lost our registration (it
        restarted between two beats) or the reader saw the link drop,
        register again."""
        client = self.client
        asked = time.monotonic()
        if asked - self.last_beat > 2 * self.heartbeat:
            self.give_grace()  # Redis or we stalled: every heartbeat may have lapsed meanwhile
        pipe = client.pipeline(transaction=False)
        pipe.set(self.key("alive:" + self.node_id), "1", px=self.ttl_ms)
        pipe.expire(self.key("member:" + self.node_id), STREAM_SECONDS)
        pipe.sismember(self.key("nodes"), self.node_id)
        pipe.smembers(self.key("nodes"))
        pipe.xtrim(self.key("stream"), maxlen=STREAM_MAXLEN, approximate=True)
        if self.trim_to is not None:
            pipe.xtrim(self.key("stream"), minid=self.trim_to, approximate=True)
            self.trim_to = None
        registered, members = pipe.execute()[2:4]
        self.last_beat = time.monotonic()
        if self.last_beat - asked > self.heartbeat:
            self.give_grace()  # Redis was stopped for a while: heartbeats lapsed in it
        if not registered or not self._connected:
            self._register()
        self.registered = {n.decode() for n in members}
        self.watched |= self.registered - {self.node_id}
        if not self.watched or time.monotonic() < self.grace_until:
            return
        others = sorted(self.watched)
        pipe = client.pipeline(transaction=False)
        for node in others:
            pipe.exists(self.key("alive:" + node))
        for node, alive in zip(others, pipe.execute()):
            if not alive:
                self.watched.discard(node)
                sessions = client.hgetall(self.key("sessions:" + node))
                last = client.xrevrange(self.key("stream"), count=1)
                client.srem(self.key("nodes"), node)
                client.delete(self.key("users:" + node))
                self.dead_marks[node] = last[0][0].decode() if last else "0-0"
                self.hand_over(NodeDead(node, {k.decode(): v.decode()
                                               for k, v in sessions.items()},
                                        self.dead_marks[node]))

    def give_grace(self) -> None:
        """Take nobody for dead for a while: after a reconnection, or a stall
        of Redis (its keys expired while it stood still) or of ours, the
        others need a beat or two (and a reconnection) to be seen alive."""
        self.grace_until = max(self.grace_until,
                               time.monotonic() + self.ttl_ms / 1000 + MAX_BACKOFF)

    def read_presence(self) -> dict[str, dict[str, str]]:
        client = self.client
        nodes = [n.decode() for n in client.smembers(self.key("nodes"))]
        snapshot = {}
        for node in nodes:
            if node == self.node_id or not client.exists(self.key("alive:" + node)):
                continue
            users = client.hgetall(self.key("users:" + node))
            snapshot[node] = {k.decode(): v.decode() for k, v in users.items()}
            self.watched.add(node)
        return snapshot

    def read_bans(self) -> dict[str, tuple[float, str]]:
        """The bans in force: address -> (seconds left, reason)."""
        client, prefix = self.client, self.key("ban:")
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
            pipe.get(key)
        results = pipe.execute()
        bans = {}
        for key, left, reason in zip(keys, results[0::2], results[1::2]):
            if reason is not None and left and left > 0:
                bans[key.decode()[len(prefix):]] = (left / 1000, reason.decode())
        return bans

    def deregister(self) -> None:
        """Leave the cluster (a clean stop).  Users with a session stay
        present for the other nodes until the resume grace ends, as after
        a crash: they notice this node is gone and resume them."""
        client, node = self.client, self.node_id
        staying = {nick: room for nick, room in self.users.items() if nick in self.sessions}
        for nick in list(self.users):
            if nick not in staying:
                client.release_nick(keys=[self.key("nick:" + proto.name_key(nick))],
                                    args=[node])
        pipe = client.pipeline(transaction=False)
        self.append(pipe, RemotePresence(staying).to_wire(node))
        pipe.execute()
        client.delete(self.key("users:" + node), self.key("alive:" + node))
        client.srem(self.key("nodes"), node)

    def _log_unexpected(self, exc: Exception) -> None:
        if not isinstance(exc, self._redis_module.RedisError):
            log.exception("cluster: unexpected error in the Redis link; reconnecting")

    def _went_down(self, reason: str) -> None:
        with self._state_lock:
            if not self._connected:
                return
            self._connected = False
            self._was_lost = True
        log.warning("cluster: lost Redis (%s); serving local users only", reason)
        self.hand_over(LinkLost(reason))

    def _drain_while_down(self, seconds: float) -> bool:
        """While Redis is unreachable each command does its while_down part
        (claims succeed locally and are made again on reconnection, events
        are kept for later, presence is kept).  True after Stop, unless
        events wait to be passed on: then Stop waits for Redis (it is
        carried out once the link is back), up to STOP_WAIT."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for command in self._next_commands(remaining):
                if isinstance(command, Stop):
                    if not self.buffer or command.waited_enough():
                        if self.buffer:
                            log.error("cluster: stopping with %d events Redis never took",
                                      len(self.buffer))
                        return True
                    if not command.waiting:
                        command.waiting = True
                        log.warning("cluster: stopping; waiting up to %g s for Redis to take "
                                    "%d events said here", STOP_WAIT, len(self.buffer))
                    self._outbox.put(command)  # after reconnecting: register, append, stop
                    return False
                command.while_down(self)

    # ---- the reader thread ----

    def _read_loop(self) -> None:
        backoff = 0.1
        while self._running:
            try:
                client = self._connect()
                self._start_reading(client)
                backoff = 0.1
                while self._running:
                    if self.restart_reading:
                        self.restart_reading = False
                        self.cursor = "0-0"
                    entries = client.xread({self.key("stream"): self.cursor},
                                           count=READ_COUNT, block=500)
                    for _, items in entries or ():
                        self._receive(client, [(entry_id.decode(), fields.get(b"e", b""))
                                               for entry_id, fields in items])
                        self.cursor = items[-1][0].decode()
                client.close()
            except Exception as exc:
                self._log_unexpected(exc)
                self._went_down(str(exc))
                time.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    def _start_reading(self, client) -> None:
        """Where to read from.  The first time: the stream's recent past
        (HISTORY_SECONDS by Redis's clock), so that this node can replay
        what the sessions of a node that died (or the node this one
        replaces) missed; the core holds new hellos until that is read.
        After a reconnection, where we were, unless that is past the end of
        the stream (Redis lost its data): then from its start."""
        last = client.xrevrange(self.key("stream"), count=1)
        end = last[0][0].decode() if last else "0-0"
        catching_up = False
        if self.cursor is None:
            past = stream_id(end)[0] - self.history_ms
            self.cursor = f"{max(0, past)}-0" if end != "0-0" else end
            catching_up = stream_id(self.cursor) < stream_id(end)
            self.catch_up_end = stream_id(end) if catching_up else None
        elif stream_id(self.cursor) > stream_id(end):
            self.cursor = "0-0"
        self.hand_over(Progress(self.cursor, start=True, catching_up=catching_up,
                                caught_up=not catching_up))

    def _receive(self, client, batch: list[tuple[str, bytes]]) -> None:
        """A batch of stream entries (ID, event): parsed and handed over in
        order (the core vets them), then how far the stream has been read."""
        own = []
        for entry_id, data in batch:
            self.count_bytes(entry_id, len(data))
            try:
                event = parse_node_event(data, entry_id)
            except proto.ProtocolError as exc:
                self.log_once("ignoring a malformed event", str(exc)[:200])
                continue
            if event.node == self.node_id:
                own.append((event.seq, entry_id))
                continue
            past = self.catch_up_end is not None and stream_id(entry_id) <= self.catch_up_end
            if not past and not self._from_a_member(client, event.node):  # (the past holds
                self.log_once("ignoring events from an unregistered node", event.node[:40])
                continue  # the events of nodes that died since: those are what it is read for)
            self.watched.add(event.node)
            self.hand_over(event)
        if batch:
            last = stream_id(batch[-1][0])
            caught_up = self.catch_up_end is not None and last >= self.catch_up_end
            if caught_up:
                self.catch_up_end = None
            self.hand_over(Progress(batch[-1][0], tuple(own), caught_up=caught_up))

    def count_bytes(self, entry_id: str, size: int) -> None:
        """Keep the stream's bytes (as read here) under STREAM_BYTES: past
        it, the beat trims the stream's oldest entries."""
        sizes = self.sizes
        sizes.append((entry_id, size))
        self.stream_bytes += size
        oldest_kept = stream_id(entry_id)[0] - STREAM_SECONDS * 1000  # gone from Redis too
        while sizes and (len(sizes) > STREAM_MAXLEN or stream_id(sizes[0][0])[0] < oldest_kept):
            self.stream_bytes -= sizes.popleft()[1]
        while self.stream_bytes > STREAM_BYTES and sizes:
            oldest, dropped = sizes.popleft()
            self.stream_bytes -= dropped
            self.trim_to = oldest

    def _from_a_member(self, client, node: str) -> bool:
        """A node of the cluster, now or lately: one that stopped, or that
        another node took for dead, may still have events of its last
        moments in the stream, read late (never judged by whether it is
        registered when they are read)."""
        if node in self.registered or node in self.dead_marks or node in self.members:
            return True
        if client.exists(self.key("member:" + node)):
            if len(self.members) >= MEMBERS_KEPT:
                self.members.clear()
            self.members.add(node)
            return True
        return False


def share_world_state(url: str, data: dict, prefix: str = "chat:") -> dict:
    """World mode in a cluster, at start-up: the world's state as Redis
    keeps it, after filling in (never overwriting) what Redis does not have
    yet from ``data`` (this node's --state, or the world as it begins).
    Returns the shared state in WorldState.to_data()'s form."""
    import redis
    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        items, players = prefix + "world:items", prefix + "world:players"
        pipe = client.pipeline(transaction=False)
        for item, place in data.get("items", {}).items():
            pipe.hsetnx(items, item, lying_in(place))
        for player, held in data.get("carried", {}).items():
            for item in held:
                pipe.hsetnx(items, item, held_by(player))
        for player, place in data.get("players", {}).items():
            pipe.hsetnx(players, player, place)
        pipe.execute()
        shared = {"items": {}, "carried": {}, "players": {}}
        for item, where in client.hgetall(items).items():
            kind, _, value = where.decode().partition(":")
            if kind == PLACE:
                shared["items"][item.decode()] = value
            else:
                shared["carried"].setdefault(value, []).append(item.decode())
        shared["players"] = {k.decode(): v.decode() for k, v in client.hgetall(players).items()}
        return shared
    finally:
        client.close()


def masked_url(url: str) -> str:
    """The Redis URL as it may be logged: any password replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
