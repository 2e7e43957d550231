"""Sessions over real sockets: a reset connection resumes with exactly what
it missed, unseen; base clients get the base protocol byte for byte."""

import socket
import struct
import time

import pytest

from termchat.wire import protocol as proto
from chat_server import LINGER_SECONDS
from tests.support import SESSION_EXPIRED, RawClient, chat_from, join, leave, wait_for


def session_client(port, nick, **fields):
    client = RawClient(port)
    client.nick = nick
    client.send({"type": "hello", "nick": nick, "session": True, **fields})
    return client


def started(port, nick):
    """A session client past its join and token: (client, token, last id)."""
    client = session_client(port, nick)
    own = client.expect(lambda m: m["type"] == "join" and m["nick"] == nick)
    token = client.expect(lambda m: m["type"] == "session")["token"]
    return client, token, own["id"]


def reset(client):
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()


def bare(message):
    return {k: v for k, v in message.items() if k not in ("id", "time", "history")}


def test_a_reset_session_resumes_with_exactly_what_it_missed_unseen(connect, server):
    chris, lee = connect("chris"), connect("lee")
    pat, token, last = started(server.port, "pat")
    for other in (chris, lee):
        other.expect(join("pat"))
    reset(pat)
    wait_for(lambda: "detach pat" in server.log_text(), describe=server.log_text)
    chris.chat("while you were out")
    lee.send({"type": "dm", "to": "pat", "message": "psst"})
    lee.send({"type": "enter", "room": "games"})
    lee.expect({"type": "enter", "nick": "lee", "room": "games"})
    lee.chat("only in games")
    chris.expect({"type": "exit", "nick": "lee", "room": "lobby"})
    back = session_client(server.port, "pat", resume=token, after=last)
    assert back.expect(lambda m: True) == {"type": "resumed", "missed": 3}
    missed = [bare(back.expect(lambda m: True)) for _ in range(3)]
    assert missed == [chat_from("chris", "while you were out"),
                      {"type": "dm", "from": "lee", "to": "pat", "message": "psst"},
                      {"type": "exit", "nick": "lee", "room": "lobby"}]
    chris.chat("live again")
    assert bare(back.expect(lambda m: True)) == chat_from("chris", "live again")
    for other in (chris, lee):
        other.drain()
        assert [m for m in other.received if m.get("nick") == "pat"
                and m["type"] in ("join", "leave")] == [join("pat")]


@pytest.mark.server_args("--resume-grace", "1")
def test_the_grace_ending_produces_the_leave(connect, server):
    chris = connect("chris")
    pat, _, _ = started(server.port, "pat")
    chris.expect(join("pat"))
    reset(pat)
    started_at = time.monotonic()
    chris.expect(leave("pat"), timeout=5)
    assert 0.8 < time.monotonic() - started_at < 4


def test_quit_produces_the_leave_at_once(connect, server):
    chris = connect("chris")
    pat, _, _ = started(server.port, "pat")
    chris.expect(join("pat"))
    pat.send({"type": "quit"})
    chris.expect(leave("pat"), timeout=2)
    quit_at = time.monotonic()
    pat.expect_closed(timeout=5)
    assert time.monotonic() - quit_at < LINGER_SECONDS  # ended at once, not at the linger's end


def test_a_bad_token_gets_session_expired_and_a_fresh_hello_works(server):
    client = session_client(server.port, "pat", resume="no-such-token", after="0")
    assert client.expect(lambda m: True) == SESSION_EXPIRED
    client.send({"type": "hello", "nick": "pat"})
    client.expect(join("pat"))


@pytest.mark.server_args("--history", "3")
def test_newcomers_get_the_last_messages_marked_as_history(connect, server):
    chris = connect("chris")
    for i in range(5):
        chris.chat(f"line {i}")
    chris.expect(chat_from("chris", "line 4"))
    pat = session_client(server.port, "pat")
    got = [pat.expect(lambda m: True) for _ in range(5)]
    assert [m["type"] for m in got[:2]] == ["join", "session"]
    assert [bare(m) for m in got[2:]] == [chat_from("chris", f"line {i}") for i in (2, 3, 4)]
    assert all(m["history"] is True and isinstance(m["time"], float) for m in got[2:])


def test_base_clients_get_the_base_packets_byte_for_byte(server):
    base = socket.create_connection(("127.0.0.1", server.port))
    base.sendall(proto.encode(proto.Hello("base")))
    pat, _, _ = started(server.port, "pat")
    pat.chat("hello")
    pat.expect(lambda m: m.get("message") == "hello")
    pat.send({"type": "quit"})
    expected = b"".join(proto.encode_object(m) for m in (
        join("base"), join("pat"), chat_from("pat", "hello"), leave("pat")))
    base.settimeout(5)
    data = b""
    while len(data) < len(expected):
        data += base.recv(4096)
    assert data == expected
    base.close()


def test_a_resume_over_sockets_replays_nothing_of_a_previous_holder(connect, server):
    """Issue 19, finding 2: the old alice's DMs and her private room's chat
    must not reach a new holder of the nick, whatever ``after`` it sends."""
    bob = connect("bob")
    alice, _, _ = started(server.port, "alice")
    bob.expect(join("alice"))
    bob.send({"type": "dm", "to": "alice", "message": "for the old alice"})
    alice.expect(lambda m: m.get("message") == "for the old alice")
    alice.send({"type": "enter", "room": "private"})
    alice.chat("private words")
    alice.expect(lambda m: m.get("message") == "private words")
    alice.send({"type": "quit"})
    bob.expect(leave("alice"))
    mallory, token, _ = started(server.port, "alice")
    carol = connect("carol")
    carol.send({"type": "enter", "room": "private"})
    carol.chat("said after the old alice left")
    carol.expect(lambda m: m.get("message") == "said after the old alice left")
    reset(mallory)
    wait_for(lambda: server.log_text().count("detach alice") == 1, describe=server.log_text)
    back = session_client(server.port, "alice", resume=token, after="0")
    resumed = back.expect(lambda m: m["type"] in ("resumed", "error"))
    assert resumed["type"] == "resumed", resumed
    replay = [back.expect(lambda m: True) for _ in range(resumed["missed"])]
    texts = {m.get("message") for m in replay}
    assert texts.isdisjoint({"for the old alice", "private words",
                             "said after the old alice left"}), replay


def test_an_after_the_server_cannot_use_is_expired_and_logged_in_one_line_at_most(server):
    """Issue 19, finding 10: 30 nines once per new connection wrote a 1 KB
    traceback per connection."""
    pat, token, _ = started(server.port, "pat")
    for _ in range(20):  # its own token, from new connections, while it stays joined
        forged = session_client(server.port, "pat", resume=token, after="9" * 30)
        assert forged.expect(lambda m: True) == SESSION_EXPIRED
        forged.close()
    wait_for(lambda: server.log_text().count("disconnect") >= 20, describe=server.log_text)
    log = server.log_text()
    assert "Traceback" not in log and len(log.splitlines()) < 80
