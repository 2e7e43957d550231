"""Drive the chat core in memory: events in, each connection's packets out.

No sockets, no threads, no clock: the harness plays the transport's part
(feeding payloads, ending turns) and decodes what the delivery layer queued
for each connection.
"""

from __future__ import annotations

import json
from typing import Any

from msgspec.structs import replace

from termchat.cluster import events as cluster
from termchat.wire import protocol as proto
from termchat.core.core import Access, ChatCore, Limits, SessionSettings
from termchat.core.delivery import Delivery, Outlet

UNLIMITED = Limits(hello_timeout=0, max_per_ip=0, rate=0, connect_rate=0)


class FakeLink:
    """Stands in for termchat.cluster.link.ClusterLink (the core's
    ports.Link): records what the core asks, and numbers the events it
    publishes as the real link does (``events``: each published node event
    with its seq)."""

    def __init__(self, node_id: str = "node-a") -> None:
        self.node_id = node_id
        self.calls: list[tuple] = []
        self.events: list[Any] = []
        self._published = 0

    @property
    def published_count(self) -> int:
        return self._published

    def _publish(self, event: Any) -> int:
        self._published += 1
        self.events.append(replace(event, node=self.node_id, seq=self._published))
        return self._published

    def claim(self, token: Any, nick: str, key: str) -> None:
        self.calls.append(("claim", token, nick))

    def release(self, nick: str, key: str) -> None:
        self.calls.append(("release", nick))

    def joined(self, nick: str, room: str, replaces: str = "") -> int:
        self.calls.append(("joined", nick, room))
        return self._publish(cluster.RemoteJoin(nick, room, replaces))

    def rename(self, token: Any, old: str, new: str) -> int:
        self.calls.append(("rename", token, old, new))
        return self._publish(cluster.RemoteRename(old, new))

    def left(self, nick: str, key: str) -> int:
        self.calls.append(("left", nick))
        return self._publish(cluster.RemoteLeave(nick))

    def moved(self, nick: str, old: str, new: str, way: str = "") -> int:
        self.calls.append(("moved", nick, old, new))
        return self._publish(cluster.RemoteMove(nick, old, new, way))

    def publish(self, event: Any) -> int:
        self.calls.append(("publish", event))
        return self._publish(event)

    def ban(self, address: str, minutes: int, reason: str) -> int:
        self.calls.append(("ban", address, minutes, reason))
        return self._publish(cluster.RemoteBan(address, minutes * 60.0, reason))

    def record_session(self, digest: str, nick: str, old: str | None = None,
                       room: str | None = None) -> None:
        self.calls.append(("record_session", digest, nick))

    def end_session(self, digest: str | None, nick: str, node: str | None = None) -> None:
        self.calls.append(("end_session", digest, nick, node))

    def take_over(self, token: Any, digest: str, nick: str) -> None:
        self.calls.append(("take_over", token, digest, nick))

    def adopted(self, nick: str, room: str, old: str) -> int:
        self.calls.append(("adopted", nick, room, old))
        return self._publish(cluster.RemoteTakeover(nick, old, room))

    def hand_back(self, digest: str, nick: str, old: str) -> None:
        self.calls.append(("hand_back", digest, nick, old))

    def forget(self, nick: str) -> None:
        self.calls.append(("forget", nick))

    def take_item(self, token: Any, item: str, place: str, player: str) -> int:
        self.calls.append(("take_item", token, item, place, player))
        self._published += 1  # the number its event gets if Redis grants it
        return self._published

    def put_item(self, item: str, place: str) -> int:
        self.calls.append(("put_item", item, place))
        return self._publish(cluster.RemoteItem(item, place, ""))

    def save_place(self, player: str, place: str | None) -> None:
        self.calls.append(("save_place", player, place))

    def hold_item(self, item: str, player: str) -> None:
        self.calls.append(("hold_item", item, player))


class Harness:
    """The chat core and the real delivery layer, with the transport's part
    played here.  Limits are off unless a test gives some."""

    def __init__(self, limits: Limits = UNLIMITED, link: FakeLink | None = None,
                 sessions: SessionSettings = SessionSettings(), access: Access = Access(),
                 world_state=None) -> None:
        self.delivery = Delivery(limits.max_queue)
        self.core = ChatCore(self.delivery, limits, link, sessions, access=access,
                             world_state=world_state)
        self.now = 0.0
        self._decoders: dict[Outlet, proto.PacketDecoder] = {}
        self.dropped: list[Outlet] = []

    def connect(self, nick: str | None = None, host: str = "127.0.0.1") -> Outlet:
        outlet = Outlet()
        self._decoders[outlet] = proto.PacketDecoder()
        self.core.connected(outlet, (host, 40000 + len(self._decoders)), self.now)
        if nick is not None:
            self.send(outlet, {"type": "hello", "nick": nick})
        return outlet

    def joined(self, *nicks: str) -> list[Outlet]:
        """Connect and say hello for each nick; discard what they received."""
        outlets = [self.connect(nick) for nick in nicks]
        for outlet in outlets:
            self.received(outlet)
        return outlets

    def crowd(self, *nicks: str) -> list[Outlet]:
        """Like joined(), for many: what they received is dropped undecoded."""
        outlets = [self.connect(nick) for nick in nicks]
        self.discard_output(outlets)
        return outlets

    def discard_output(self, outlets: list[Outlet]) -> None:
        self.end_turn()
        for outlet in outlets:
            outlet.take_output()

    def packets(self, outlet: Outlet) -> list[bytes]:
        """The raw payloads queued for the connection (each as on the wire)."""
        self.end_turn()
        data = b"".join(bytes(chunk) for chunk in outlet.take_output())
        return self._decoders[outlet].feed(data)

    def send(self, outlet: Outlet, *messages: dict | bytes) -> None:
        payloads = [m if isinstance(m, bytes) else json.dumps(m).encode() for m in messages]
        self.core.received(outlet, payloads, self.now)

    def chat(self, outlet: Outlet, text: str) -> None:
        self.send(outlet, {"type": "chat", "message": text})

    def lose(self, outlet: Outlet, reason: str = "closed the connection") -> None:
        self.core.connection_lost(outlet, reason, self.now)
        self.delivery.forget(outlet)

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.core.tick(self.now)

    def end_turn(self) -> None:
        """What the transport does after each loop turn."""
        while self.delivery.log or self.delivery.overflowed:
            for outlet in self.delivery.end_turn():
                self.dropped.append(outlet)
                self.lose(outlet, "output queue passed the bound")

    def received(self, outlet: Outlet) -> list[dict]:
        """Everything queued for the connection since the last call."""
        return [json.loads(p) for p in self.packets(outlet)]

    def closed(self, outlet: Outlet) -> bool:
        return outlet.closing or outlet.gone
