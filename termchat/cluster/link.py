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
  entry's field ``e`` is an event, JSON with ``node`` and ``kind``, or a
  JSON array of the events the node published in a row (at most
  PACK_LIMIT): each has its own position (events.py).  Every node reads it
  from the last ID it applied, so an outage loses nothing the stream
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

The commands the writer runs are in commands.py, its death watch in
watch.py, the reader in reader.py, the Lua scripts in scripts.py, the events in events.py.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import urllib.parse
import uuid
from collections import deque
from typing import Any, Callable, Iterator

from termchat.cluster import scripts
from termchat.cluster.reader import (STREAM_MAXLEN, STREAM_SECONDS, StreamReader,
                                     longest_backoff)
from termchat.cluster.watch import NodeWatch
from termchat.cluster.commands import (ClaimNick, ClaimOwn, ClearPresence, Command, EndSession,
                                       HandBack, Publish, packed,
                                       RecordSession, RenameNick, SaveBan, SaveWorld, SetPresence,
                                       STOP_WAIT, Stop, StopLink, TakeItem, TakeOver, PLACE,
                                       held_by,
                                       lying_in, session_record)
from termchat.cluster.events import (PACK_LIMIT, Conflict, DataLost, LinkLost, LinkRestored,
                                     NodeEvent, RemoteBan, RemoteItem, RemoteJoin,
                                     RemoteLeave, RemoteMove, RemotePresence, RemoteRename,
                                     RemoteTakeover, SessionGone, Snapshot, Undelivered,
                                     entry_end, pack, stream_id)
from termchat.wire import protocol as proto

log = logging.getLogger("chat_cluster")

HISTORY_SECONDS = 90.0      # what a node reads of the stream's past when it starts
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
        self.max_backoff = longest_backoff(heartbeat)  # between reconnection attempts
        self.prefix = prefix
        self.client = None                 # the writer's connection
        self.users: dict[str, str] = {}    # our users: nick -> room (writer's copy)
        self.sessions: dict[str, str] = {}  # ...those with sessions: nick -> digest
        self.buffer = OutageBuffer()       # events kept while Redis is away
        self.hand_backs: list[HandBack] = []  # ...and sessions to give back then
        self.watch = NodeWatch(self.node_id, heartbeat, self.ttl_ms,  # who lives (the writer's)
                               self.max_backoff)
        self.epoch: str | None = None      # the Redis data set we know
        self._logged: set[tuple[str, str]] = set()
        self._published = 0                # our events so far (the event loop's count)
        self._in_flight: list[Command] = []
        self._wake = wake
        self._outbox = Outbox()
        self._inbox: deque = deque()
        self.running = False
        self._connected = False
        self._was_lost = False
        self._state_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.reader = StreamReader(self, history_seconds)  # its thread's state and loop

    # ---- called from the event loop: queue work, take events ----

    def start(self) -> None:
        self.running = True
        for target, name in ((self._write_loop, "redis-writer"),
                             (self.reader.run, "redis-reader")):
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
        self.running = False  # the reader (a daemon) ends at its next poll

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
        self._outbox.put(Publish([event.to_wire(self.node_id, self._published)]))
        return self._published

    def take_events(self) -> list:
        inbox = self._inbox  # the threads append meanwhile: take what is there now
        return [inbox.popleft() for _ in range(len(inbox))]

    # ---- shared by the threads and the commands ----

    def key(self, name: str) -> str:
        return self.prefix + name

    def hand_over(self, *events: Any) -> None:
        self._inbox.extend(events)
        self._wake()

    def append(self, pipe, wire: bytes) -> None:
        """Add an entry (an event or a pack) to the stream, letting entries older than
        STREAM_SECONDS go (by Redis's clock, approximately)."""
        oldest = f"{max(0, self.redis_ms() - STREAM_SECONDS * 1000)}-0"
        pipe.xadd(self.key("stream"), {"e": wire}, minid=oldest, approximate=True)

    def redis_ms(self) -> int:
        """Milliseconds by Redis's clock, as the last stream entry read says
        (this process's clock until one is read)."""
        cursor = self.reader.cursor
        return stream_id(cursor)[0] if cursor and cursor != "0-0" else int(time.time() * 1000)

    def log_once(self, what: str, detail: str) -> None:
        if (what, detail) not in self._logged and len(self._logged) < 1000:
            self._logged.add((what, detail))
            log.warning("cluster: %s: %s (logged once)", what, detail)

    def connect(self):
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
        while self.running:
            try:
                if self.client is None:
                    self.client = self.connect()
                    self._register()
                    backoff = 0.1
                    next_beat = time.monotonic() + self.heartbeat
                if time.monotonic() - next_beat > self.ttl_ms / 1000:
                    self._beat()  # we were stopped: be registered again before writing
                    next_beat = time.monotonic() + self.heartbeat
                timeout = max(0.0, next_beat - time.monotonic())
                self._process(self._outbox.take(timeout))
                if time.monotonic() >= next_beat:
                    self._beat()
                    next_beat = time.monotonic() + self.heartbeat
            except StopLink:
                return
            except Exception as exc:  # a dead link thread would silently split the chat
                self.log_unexpected(exc)
                if self.client is None and not self._connected and backoff == 0.1:
                    log.warning("cluster: cannot reach Redis at %s (%s); retrying",
                                self.shown_url, exc)
                self.client = None
                self.went_down(str(exc))
                in_flight, self._in_flight = self._in_flight, []
                for command in in_flight:  # Redis may or may not have them: redo
                    command.while_down(self)
                if self._drain_while_down(backoff):
                    return
                backoff = min(self.max_backoff, backoff * 2)

    def _process(self, commands: list[Command]) -> None:
        """Run a batch of commands in one pipeline (the events published in
        a row in one stream entry), then let each read its own results (Stop
        raises StopLink once the rest are done)."""
        if not commands:
            return
        commands = packed(commands)
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
        self._give_back_kept()
        waiting = drop_sessions_gone(self, lost)  # another node may still take these up
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
                if nick not in waiting:
                    write_session_again(self, nick, digest)
        claim_nicks_again(self, waiting, lost)
        pipe = client.pipeline(transaction=False)
        self.append(pipe, RemotePresence(dict(self.users)).to_wire(node))  # unnumbered:
        # presence may be applied twice
        kept = self.buffer.events()
        for start in range(0, len(kept), PACK_LIMIT):
            self.append(pipe, pack(kept[start:start + PACK_LIMIT]))
        pipe.execute()
        dropped = self.buffer.passed_on()
        if dropped:
            self.hand_over(Undelivered(dropped))
        self.watch.give_grace()
        last = client.xrevrange(self.key("stream"), count=1)
        self.hand_over(Snapshot(self.watch.read_presence(client, self.key),
                                read_bans(client, self.key("ban:")),
                                entry_end(last[0][0].decode() if last else "0-0")))
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
            self.reader.restart_reading = True
            self.hand_over(DataLost())
        self.epoch = epoch
        return lost

    def _give_back_kept(self) -> None:
        """Sessions taken over for resumes whose connections went before
        they were taken up, while Redis was away: given back now, before
        their nodes judge whose they are (the list goes once Redis took it)."""
        if self.hand_backs:
            pipe = self.client.pipeline(transaction=False)
            for command in self.hand_backs:
                command.queue(self, pipe)
            pipe.execute()
            self.hand_backs = []

    def _beat(self) -> None:
        """Refresh our heartbeat; notice nodes whose heartbeat expired.

        Every node checks every node it has heard of, so each survivor
        notices a death itself.  If Redis lost our registration (it
        restarted between two beats) or the reader saw the link drop,
        register again."""
        client, watch = self.client, self.watch
        asked = watch.asking()
        pipe = client.pipeline(transaction=False)
        pipe.set(self.key("alive:" + self.node_id), "1", px=self.ttl_ms)
        pipe.expire(self.key("member:" + self.node_id), STREAM_SECONDS)
        pipe.sismember(self.key("nodes"), self.node_id)
        pipe.smembers(self.key("nodes"))
        pipe.xtrim(self.key("stream"), maxlen=STREAM_MAXLEN, approximate=True)
        trim_to = self.reader.trim_to
        if trim_to is not None:
            pipe.xtrim(self.key("stream"), minid=trim_to, approximate=True)
            self.reader.trim_to = None
        registered, members = pipe.execute()[2:4]
        watch.answered(asked, members)
        if not registered or not self._connected:
            self._register()
        for death in watch.find_dead(client, self.key):  # its mark: as the core counts
            self.hand_over(dataclasses.replace(death, mark=entry_end(death.mark)))

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

    def log_unexpected(self, exc: Exception) -> None:
        if not isinstance(exc, self._redis_module.RedisError):
            log.exception("cluster: unexpected error in the Redis link; reconnecting")

    def went_down(self, reason: str) -> None:
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
        stop: Stop | None = None
        while True:
            if stop is not None and stop.may_end(self):
                return True
            until = deadline if stop is None else min(deadline, stop.since + STOP_WAIT)
            remaining = until - time.monotonic()
            if remaining <= 0:
                if time.monotonic() >= deadline:
                    break
                continue  # the stop's wait is over
            for command in self._outbox.take(remaining):
                if isinstance(command, Stop):
                    stop = command
                else:
                    command.while_down(self)
        if stop is not None:
            self.stop_later(stop)  # after reconnecting: register, append, stop
        return False

    def stop_later(self, stop: Stop) -> None:
        self._outbox.put(stop)


def write_session_again(link: ClusterLink, nick: str, digest: str) -> None:
    """A session of ours in Redis again (it may have lost it), but for its
    holder: a node that took it over since drop_sessions_gone looked keeps
    it (claim_nicks_again then finds it moved)."""
    record = session_record(nick, link.node_id, link.users.get(nick))
    holder = record.pop("node")
    key = link.key("session:" + digest)
    link.client.hset(key, mapping=record)
    link.client.hsetnx(key, "node", holder)


def claim_nicks_again(link: ClusterLink, waiting: set[str], redis_lost: bool) -> None:
    """Registering again: our users' nicks, claimed again (but those of
    sessions another node may still take up).  A claim refused for a
    session user whose session another node took over since
    drop_sessions_gone looked (a resume there, a moment ago) is that move,
    not a conflict: it looks again for that one."""
    def claimed(nick: str) -> bool:
        return link.client.claim_nick(keys=[link.key("nick:" + proto.name_key(nick))],
                                      args=[link.node_id, link.key("alive:")]) is not None

    for nick in list(link.users):
        if nick in waiting or claimed(nick):
            continue
        if nick in link.sessions:
            waiting |= drop_sessions_gone(link, redis_lost, only=(nick,))
            if nick not in link.sessions or nick in waiting or claimed(nick):
                continue
        link.hand_over(Conflict(nick))


def drop_sessions_gone(link: ClusterLink, redis_lost: bool,
                       only: tuple[str, ...] | None = None) -> set[str]:
    """Before registering again (after an outage, or a pause that made
    the others take us for dead): sessions of ours taken up on another
    node meanwhile, or ended there, are not ours to claim any more.  One
    taken over by a node that never took its user up (the resume's
    connection went, and the node died or Redis went away before it
    could give it back) is still ours: we take its nick back.  One taken
    over by a node that lives and has not taken it up yet is in that
    node's wait for its reader (for what we are about to append): it takes
    it up (its takeover event tells us) or gives it back, and until then
    we claim neither its nick nor its record (those nicks are returned).
    ``only``: look at these nicks' sessions alone."""
    nicks = [nick for nick in (only if only is not None else link.sessions)
             if nick in link.sessions]
    if not nicks:
        return set()
    pipe = link.client.pipeline(transaction=False)
    for nick in nicks:
        pipe.hget(link.key("session:" + link.sessions[nick]), "node")
    holders = [h.decode() if h is not None else None for h in pipe.execute()]
    pipe = link.client.pipeline(transaction=False)
    for nick, holder in zip(nicks, holders):
        pipe.hexists(link.key("users:" + (holder or "")), nick)
        pipe.exists(link.key("alive:" + (holder or "")))
    answers = pipe.execute()
    waiting = set()
    for nick, holder, taken_up, alive in zip(nicks, holders, answers[0::2], answers[1::2]):
        if holder == link.node_id or (holder is None and redis_lost):
            continue
        if holder is not None and not taken_up:
            if alive:
                waiting.add(nick)
            else:  # its taker died: the session and its nick are ours again
                link.client.hset(link.key("session:" + link.sessions[nick]), "node",
                                 link.node_id)
                link.client.set(link.key("nick:" + proto.name_key(nick)), link.node_id)
            continue  # ours still: registering writes its record again (once not waiting)
        del link.sessions[nick]
        link.users.pop(nick, None)
        link.hand_over(SessionGone(nick))
    return waiting


class Outbox:
    """The loop's work for the writer, in order.  Putting is an append, and
    a wake-up only when the writer may be waiting (once per batch, not once
    per command); the writer takes everything there at once."""

    def __init__(self) -> None:
        self._commands: deque[Command] = deque()
        self._ready = threading.Event()  # set: something was put since the last take

    def put(self, command: Command) -> None:
        self._commands.append(command)
        if not self._ready.is_set():
            self._ready.set()

    def take(self, timeout: float) -> list[Command]:
        """All that is queued, waiting up to ``timeout`` for something."""
        if not self._commands:
            self._ready.wait(timeout)
        self._ready.clear()  # before taking: a put from now on wakes the next take
        commands = self._commands
        return [commands.popleft() for _ in range(len(commands))]


class OutageBuffer:
    """What this node's users said while Redis was away, for Redis once it
    is back: at most BUFFER_EVENTS events and BUFFER_SECONDS seconds (older
    ones are given up, and counted, so the users can be told)."""

    def __init__(self) -> None:
        self.kept: deque[tuple[float, str]] = deque()  # (when, event)
        self.dropped = 0

    def __len__(self) -> int:
        return len(self.kept)

    def keep(self, wire: bytes) -> None:
        now = time.monotonic()
        kept = self.kept
        kept.append((now, wire))
        while kept and (len(kept) > BUFFER_EVENTS or kept[0][0] < now - BUFFER_SECONDS):
            kept.popleft()
            self.dropped += 1

    def events(self) -> list[str]:
        return [wire for _, wire in self.kept]

    def passed_on(self) -> int:
        """Redis took them all: forget them; how many had been given up."""
        dropped, self.dropped = self.dropped, 0
        self.kept.clear()
        return dropped


def read_bans(client: Any, prefix: str) -> dict[str, tuple[float, str]]:
    """The bans in force: address -> (seconds left, reason)."""
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
