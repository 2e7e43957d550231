"""Which other nodes this node knows of, and whether they still live: the
cluster link's death watch (run by its writer thread, each heartbeat).

It owns the nodes heard of (``watched``: each beat checks their heartbeat
key), the node set as last read (``registered``), the nodes found dead with
where the stream ended then (``dead_marks``: their events up to there are
their last words, read late), and the grace during which nobody is taken
for dead: after this node (re)registers, and after a stall of Redis or of
this node, when every heartbeat may have lapsed without anyone dying."""

from __future__ import annotations

import time
from typing import Any, Callable

from termchat.cluster.events import NodeDead


class NodeWatch:
    """The death watch of one node (the writer thread's state)."""

    def __init__(self, node_id: str, heartbeat: float, ttl_ms: int,
                 max_backoff: float) -> None:
        self.node_id = node_id
        self.heartbeat = heartbeat
        self.ttl_ms = ttl_ms
        self.max_backoff = max_backoff     # the others' longest wait to reconnect
        self.watched: set[str] = set()     # nodes heard of: each beat checks they live
        self.registered: set[str] = set()  # nodes in the node set, as last read
        self.dead_marks: dict[str, str] = {}  # nodes found dead -> the stream's end then
        self.grace_until = 0.0             # nobody is taken for dead before this
        self.last_beat = 0.0               # when our last heartbeat was answered

    def give_grace(self) -> None:
        """Take nobody for dead for a while: after a reconnection, or a stall
        of Redis (its keys expired while it stood still) or of ours, the
        others need a beat or two (and a reconnection) to be seen alive."""
        self.grace_until = max(self.grace_until,
                               time.monotonic() + self.ttl_ms / 1000 + self.max_backoff)

    def asking(self) -> float:
        """A beat is about to be sent; when (for answered())."""
        asked = time.monotonic()
        if asked - self.last_beat > 2 * self.heartbeat:
            self.give_grace()  # Redis or we stalled: every heartbeat may have lapsed meanwhile
        return asked

    def answered(self, asked: float, members: set[bytes]) -> None:
        """The beat was answered, with the node set as Redis holds it."""
        self.last_beat = time.monotonic()
        if self.last_beat - asked > self.heartbeat:
            self.give_grace()  # Redis was stopped for a while: heartbeats lapsed in it
        self.registered = {n.decode() for n in members}
        self.watched |= self.registered - {self.node_id}

    def find_dead(self, client: Any, key: Callable[[str], str]) -> list[NodeDead]:
        """Nodes whose heartbeat lapsed, taken out of the cluster (unless in
        the grace): each with its sessions and where the stream ended."""
        if not self.watched or time.monotonic() < self.grace_until:
            return []
        others = sorted(self.watched)
        pipe = client.pipeline(transaction=False)
        for node in others:
            pipe.exists(key("alive:" + node))
        dead = []
        for node, alive in zip(others, pipe.execute()):
            if alive:
                continue
            self.watched.discard(node)
            sessions = client.hgetall(key("sessions:" + node))
            last = client.xrevrange(key("stream"), count=1)
            client.srem(key("nodes"), node)
            client.delete(key("users:" + node))
            self.dead_marks[node] = last[0][0].decode() if last else "0-0"
            dead.append(NodeDead(node, {k.decode(): v.decode() for k, v in sessions.items()},
                                 self.dead_marks[node]))
        return dead

    def read_presence(self, client: Any, key: Callable[[str], str]) -> dict[str, dict[str, str]]:
        """Every live node's users (nick -> room), as Redis holds them now."""
        nodes = [n.decode() for n in client.smembers(key("nodes"))]
        snapshot = {}
        for node in nodes:
            if node == self.node_id or not client.exists(key("alive:" + node)):
                continue
            users = client.hgetall(key("users:" + node))
            snapshot[node] = {k.decode(): v.decode() for k, v in users.items()}
            self.watched.add(node)
        return snapshot

    def a_member(self, node: str) -> bool:
        """A node known to be in the cluster, or to have been until it died."""
        return node in self.registered or node in self.dead_marks
