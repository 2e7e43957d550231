"""The link between one chat server process and the cluster, over Redis.

The event loop never touches Redis.  It calls :class:`ClusterLink`'s
methods, which only queue work, and it drains :meth:`ClusterLink.take_events`
when the link pokes it through the loop's wake-up socket.  Two threads do
the Redis I/O: a writer (nick claims, publishes, presence, heartbeats,
noticing dead nodes) and a reader (the pub/sub subscription).

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

import collections
import json
import logging
import queue
import threading
import time
import uuid
from typing import Any, Callable

from chat_protocol import name_key

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


class ClusterLink:
    """Queues work for Redis and hands back what the cluster says.

    Events handed back (tuples, first item the kind):
    ``("claimed", token, nick, ok)``, ``("remote", event_dict)``,
    ``("snapshot", {node_id: {nick: room}})``, ``("node_dead", node_id)``,
    ``("lost", reason)``, ``("restored",)``, ``("conflict", nick)``.
    """

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
        self._wake = wake
        self._outbox: queue.Queue = queue.Queue()
        self._inbox: collections.deque = collections.deque()
        self._users: dict[str, str] = {}   # our users: nick -> room (writer's copy)
        self._running = False
        self._connected = False
        self._was_lost = False
        self._state_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # ---- called from the event loop ----

    def start(self) -> None:
        self._running = True
        for target, name in ((self._write_loop, "redis-writer"),
                             (self._read_loop, "redis-reader")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Leave the cluster cleanly (best effort) and end the threads."""
        self._outbox.put(("stop",))  # the writer deregisters, then ends
        if self._threads:
            self._threads[0].join(timeout=3)
        self._running = False  # the reader (a daemon) ends at its next poll

    def claim(self, token: Any, nick: str, key: str) -> None:
        self._outbox.put(("claim", token, nick, key))

    def joined(self, nick: str, room: str) -> None:
        self._outbox.put(("presence", nick, room))
        self.publish({"kind": "join", "nick": nick, "room": room})

    def left(self, nick: str, key: str) -> None:
        self._outbox.put(("absent", nick, key))
        self.publish({"kind": "leave", "nick": nick})

    def moved(self, nick: str, old: str, new: str) -> None:
        self._outbox.put(("presence", nick, new))
        self.publish({"kind": "move", "nick": nick, "old": old, "new": new})

    def publish(self, event: dict) -> None:
        self._outbox.put(("publish", event))

    def take_events(self) -> list:
        events = []
        while self._inbox:
            events.append(self._inbox.popleft())
        return events

    # ---- shared by the threads ----

    def _key(self, name: str) -> str:
        return self.prefix + name

    def _hand_over(self, event: tuple) -> None:
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
        client = None
        next_beat = 0.0
        while self._running:
            try:
                if client is None:
                    client = self._connect()
                    self._register(client)
                    backoff = 0.1
                    next_beat = time.monotonic() + self.heartbeat
                timeout = max(0.0, next_beat - time.monotonic())
                if self._process(client, self._next_commands(timeout)):
                    return
                if time.monotonic() >= next_beat:
                    self._beat(client)
                    next_beat = time.monotonic() + self.heartbeat
            except Exception as exc:  # a dead link thread would silently split the chat
                self._log_unexpected(exc)
                if client is None and not self._connected and backoff == 0.1:
                    log.warning("cluster: cannot reach Redis at %s (%s); retrying", self.url, exc)
                client = None
                self._went_down(str(exc))
                if self._drain_while_down(backoff):
                    return
                backoff = min(MAX_BACKOFF, backoff * 2)

    def _next_commands(self, timeout: float) -> list:
        try:
            commands = [self._outbox.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                commands.append(self._outbox.get_nowait())
            except queue.Empty:
                return commands

    def _process(self, client, commands: list) -> bool:
        """Run a batch of commands in one pipeline; True after 'stop'."""
        if not commands:
            return False
        claim, release = client.claim_nick, client.release_nick
        pipe = client.pipeline(transaction=False)
        claims = []
        stopping = False
        for command in commands:
            kind = command[0]
            if kind == "claim":
                _, token, nick, key = command
                claim(keys=[self._key("nick:" + key)],
                      args=[self.node_id, self._key("alive:")], client=pipe)
                claims.append((token, nick))
            elif kind == "presence":
                self._users[command[1]] = command[2]
                pipe.hset(self._key("users:" + self.node_id), command[1], command[2])
            elif kind == "absent":
                self._users.pop(command[1], None)
                pipe.hdel(self._key("users:" + self.node_id), command[1])
                release(keys=[self._key("nick:" + command[2])], args=[self.node_id], client=pipe)
            elif kind == "publish":
                pipe.publish(self._key("events"), self._encode(command[1]))
            elif kind == "snapshot":
                pass  # answered after the pipeline
            elif kind == "stop":
                stopping = True
        results = pipe.execute()
        answers = iter(results)
        for command in commands:
            if command[0] == "claim":
                ok = bool(next(answers))
                token, nick = command[1], command[2]
                self._hand_over(("claimed", token, nick, ok))
            elif command[0] in ("presence", "publish"):
                next(answers)
            elif command[0] == "absent":
                next(answers)
                next(answers)
        if any(command[0] == "snapshot" for command in commands):
            self._hand_over(("snapshot", self._read_presence(client)))
        if stopping:
            self._deregister(client)
        return stopping

    def _encode(self, event: dict) -> str:
        return json.dumps(dict(event, node=self.node_id), ensure_ascii=False,
                          separators=(",", ":"))

    def _register(self, client) -> None:
        """Join (or rejoin) the cluster: heartbeat, presence, nick claims."""
        node = self.node_id
        client.set(self._key("alive:" + node), "1", px=self.ttl_ms)
        client.sadd(self._key("nodes"), node)
        users_key = self._key("users:" + node)
        client.delete(users_key)
        if self._users:
            client.hset(users_key, mapping=dict(self._users))
        for nick in list(self._users):
            if not client.claim_nick(keys=[self._key("nick:" + name_key(nick))],
                         args=[node, self._key("alive:")]):
                self._hand_over(("conflict", nick))
        client.publish(self._key("events"),
                       self._encode({"kind": "presence", "users": dict(self._users)}))
        self._hand_over(("snapshot", self._read_presence(client)))
        with self._state_lock:
            self._connected = True
            if self._was_lost:
                self._was_lost = False
                self._hand_over(("restored",))
        log.info("cluster: node %s registered with %s", node, self.url)

    def _beat(self, client) -> None:
        """Refresh our heartbeat; notice nodes whose heartbeat expired.

        If Redis lost our registration (it restarted between two beats) or
        the reader saw the link drop, register again: that also re-reads
        everyone's presence."""
        pipe = client.pipeline(transaction=False)
        pipe.set(self._key("alive:" + self.node_id), "1", px=self.ttl_ms)
        pipe.sismember(self._key("nodes"), self.node_id)
        _, registered = pipe.execute()
        if not registered or not self._connected:
            self._register(client)
        others = [n.decode() for n in client.smembers(self._key("nodes"))
                  if n.decode() != self.node_id]
        if not others:
            return
        pipe = client.pipeline(transaction=False)
        for node in others:
            pipe.exists(self._key("alive:" + node))
        for node, alive in zip(others, pipe.execute()):
            if not alive:
                client.srem(self._key("nodes"), node)
                client.delete(self._key("users:" + node))
                self._hand_over(("node_dead", node))

    def _read_presence(self, client) -> dict[str, dict[str, str]]:
        nodes = [n.decode() for n in client.smembers(self._key("nodes"))]
        snapshot = {}
        for node in nodes:
            if node == self.node_id or not client.exists(self._key("alive:" + node)):
                continue
            users = client.hgetall(self._key("users:" + node))
            snapshot[node] = {k.decode(): v.decode() for k, v in users.items()}
        return snapshot

    def _deregister(self, client) -> None:
        node = self.node_id
        for nick in list(self._users):
            client.release_nick(keys=[self._key("nick:" + name_key(nick))], args=[node])
        client.publish(self._key("events"), self._encode({"kind": "presence", "users": {}}))
        client.delete(self._key("users:" + node), self._key("alive:" + node))
        client.srem(self._key("nodes"), node)

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
        self._hand_over(("lost", reason))

    def _drain_while_down(self, seconds: float) -> bool:
        """While Redis is unreachable: claims succeed locally (they are made
        again on reconnection), publishes are dropped, presence is kept for
        later.  True after 'stop'."""
        deadline = time.monotonic() + seconds
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            for command in self._next_commands(remaining):
                kind = command[0]
                if kind == "claim":
                    self._hand_over(("claimed", command[1], command[2], True))
                elif kind == "presence":
                    self._users[command[1]] = command[2]
                elif kind == "absent":
                    self._users.pop(command[1], None)
                elif kind == "stop":
                    return True

    # ---- the reader thread ----

    def _read_loop(self) -> None:
        backoff = 0.1
        while self._running:
            try:
                client = self._connect()
                pubsub = self._pubsub_class(client.connection_pool,
                                            ignore_subscribe_messages=True)
                pubsub.resync = lambda: self._outbox.put(("snapshot",))
                pubsub.subscribe(self._key("events"))  # on_connect asks for a snapshot
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
            event = json.loads(data)
        except ValueError:
            return
        if isinstance(event, dict) and event.get("node") != self.node_id:
            self._hand_over(("remote", event))
