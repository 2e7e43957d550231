"""The real server over real loopback sockets: base behaviour and bad input."""

import json
import random
import resource
import selectors
import signal
import socket
import time

import pytest

from termchat.wire import protocol as proto
from tests.support import RawClient, ServerProcess, chat_from, join, leave, run_server


def test_two_clients_see_joins_chats_and_leaves_in_order(connect):
    pat = connect("pat")
    chris = connect("chris")
    pat.expect_next(join("chris"))
    pat.chat("hello?")
    chris.expect_next(chat_from("pat", "hello?"))  # two sockets: answer after it arrived
    chris.chat("hi!")
    pat.expect_next(chat_from("pat", "hello?"))
    for client in (pat, chris):
        client.expect_next(chat_from("chris", "hi!"))
    chris.close()
    pat.expect_next(leave("chris"))


def test_many_clients_see_the_same_order(connect):
    clients = [connect(f"user{i}") for i in range(5)]
    for i, client in enumerate(clients):
        client.chat(f"message {i}")
    seen = []
    for client in clients:
        client.expect(lambda m: m == chat_from("user4", "message 4"))
        seen.append([m for m in client.received if m["type"] == "chat"])
    assert all(s == seen[0] for s in seen) and len(seen[0]) == 5


def test_hello_is_sent_first_exactly(server):
    client = RawClient(server.port)
    client.send({"type": "hello", "nick": "pat"})
    assert client.expect(lambda m: True) == join("pat")


def test_hello_split_across_many_sends(server, connect):
    watcher = connect("watcher")
    client = RawClient(server.port)
    data = proto.encode(proto.Hello("slowpoke"))
    for i in range(len(data)):
        client.sock.sendall(data[i:i + 1])
        time.sleep(0.002)
    client.expect(join("slowpoke"))
    watcher.expect(join("slowpoke"))


def test_several_packets_in_one_send(server, connect):
    watcher = connect("watcher")
    client = RawClient(server.port)
    client.send(b"".join(proto.encode_object(m) for m in [
        {"type": "hello", "nick": "burst"},
        {"type": "chat", "message": "one"},
        {"type": "chat", "message": "two"},
    ]))
    for message in (join("burst"), chat_from("burst", "one"), chat_from("burst", "two")):
        watcher.expect_next(message)


def test_leave_after_abrupt_reset(connect):
    pat = connect("pat")
    chris = connect("chris")
    chris.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    chris.sock.close()  # linger 0: RST instead of FIN
    pat.expect(leave("chris"))


def test_leave_after_half_a_packet(connect):
    pat = connect("pat")
    chris = connect("chris")
    chris.send(proto.encode(proto.Chat("never finished"))[:7])
    chris.close()
    pat.expect(leave("chris"))
    assert all(m["type"] != "chat" for m in pat.received)


def test_chat_before_hello_gets_error_and_close(server, connect):
    pat = connect("pat")
    rude = RawClient(server.port)
    rude.chat("who needs hello")
    assert rude.expect(lambda m: True)["type"] == "error"
    rude.expect_closed()
    pat.chat("still fine")
    pat.expect(chat_from("pat", "still fine"))
    assert not any(m["type"] == "chat" and m["message"] == "who needs hello" for m in pat.received)


@pytest.mark.parametrize("nick", ["PAT", "pat", "Pat"])
def test_taken_nick_ignoring_case(server, connect, nick):
    connect("pat")
    second = RawClient(server.port, nick)
    error = second.expect(lambda m: True)
    assert error["type"] == "error" and "taken" in error["message"]
    second.expect_closed()


@pytest.mark.parametrize("nick", ["", "two words", "/slash", "x" * 33, "esc\x1b[2J", "tab\t"])
def test_bad_nick_gets_error_and_close(server, connect, nick):
    watcher = connect("watcher")
    client = RawClient(server.port, nick)
    assert client.expect(lambda m: True)["type"] == "error"
    client.expect_closed()
    watcher.chat("ok")
    watcher.expect_next(chat_from("watcher", "ok"))


def test_a_freed_nick_can_be_taken_again(server, connect):
    first = connect("pat")
    watcher = connect("watcher")
    first.close()
    watcher.expect(leave("pat"))
    connect("pat")


# Each: bytes to send after hello, whether the connection must be closed.
KEEPS_OPEN = [
    b'[1, 2, 3]',
    b'"just a string"',
    b'{"no_type": 1}',
    b'{"type": 42}',
    b'{"type": "shout", "message": "x"}',
    b'{"type": "chat"}',
    b'{"type": "chat", "message": 7}',
    b'{"type": "chat", "message": "\\udc00"}',
    b'{"type": "hello", "nick": "again"}',
]
CLOSES = [
    b"\xff\xfe\xfd",
    b"{this is not json",
    b"",
    b"[" * 20000,
]


@pytest.mark.parametrize("payload", KEEPS_OPEN)
def test_bad_packet_after_hello_gets_error_and_keeps_serving(connect, payload):
    pat = connect("pat")
    chris = connect("chris")
    chris.send(proto.frame(payload))
    error = chris.expect(lambda m: m["type"] == "error")
    assert error["message"]
    chris.chat("after the error")
    for client in (pat, chris):
        client.expect(chat_from("chris", "after the error"))
    assert not any(m["type"] == "leave" for m in pat.received)


@pytest.mark.parametrize("payload", CLOSES)
def test_garbage_payload_gets_error_then_close_and_leave(connect, payload):
    pat = connect("pat")
    chris = connect("chris")
    chris.send(proto.frame(payload))
    assert chris.expect(lambda m: True)["type"] == "error"
    chris.expect_closed()
    pat.expect(leave("chris"))
    pat.chat("others keep chatting")
    pat.expect(chat_from("pat", "others keep chatting"))


def test_rebroadcast_too_large_gets_error_and_nobody_sees_it(connect):
    pat = connect("pat")
    chris = connect("chris")
    overhead = len(proto.encode(proto.Chat(""))) - 2
    text = "x" * (proto.MAX_PAYLOAD - overhead)  # fits going in, not coming out
    pat.expect_next(join("chris"))
    chris.chat(text)
    error = chris.expect(lambda m: m["type"] == "error")
    assert "too long" in error["message"]
    chris.chat("small")
    pat.expect_next(chat_from("chris", "small"))
    chris.expect(chat_from("chris", "small"))


def test_largest_rebroadcast_that_fits_is_delivered(connect):
    pat = connect("pat")
    overhead = len(proto.encode(proto.ChatFrom("pat", ""))) - 2
    text = "y" * (proto.MAX_PAYLOAD - overhead - proto.SESSION_EXTRA)  # (room for a session's id)
    pat.chat(text)
    assert pat.expect(lambda m: m["type"] == "chat")["message"] == text


@pytest.mark.server_args("--rate", "0", "--max-per-ip", "0", "--connect-rate", "0")
def test_stuck_reader_does_not_stall_others_and_is_dropped(server):
    stuck = socket.create_connection(("127.0.0.1", server.port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(proto.encode(proto.Hello("stuck")))
    listener = RawClient(server.port, "listener")  # talks and reads its echoes
    listener.expect(join("listener"))
    talker = listener
    text = "z" * 8000
    started = time.monotonic()
    count = 1500  # 12 MB: past the 1 MiB queue plus what kernel buffers hold
    for i in range(count):
        talker.chat(f"{i} {text}")
        if i % 100 == 99:
            listener.expect(lambda m, i=i: m.get("message", "").startswith(f"{i} "),
                            timeout=5)
    assert leave("stuck") in listener.received
    assert "leave stuck" in server.log_text() and "output queue passed" in server.log_text()
    assert time.monotonic() - started < 20
    got = [m["message"].split()[0] for m in listener.received if m["type"] == "chat"]
    assert got == [str(i) for i in range(count)]
    stuck.close()


def test_sigterm_shuts_down_cleanly():
    process = ServerProcess()
    try:
        client = RawClient(process.port, "pat")
        client.expect(join("pat"))
        assert process.stop(signal.SIGTERM) == 0
        client.expect_closed()
        assert "server stopped, closed 1 connection(s)" in process.log_text()
    finally:
        process.cleanup()


def test_port_in_use_is_a_clear_error(server):
    result = run_server(str(server.port), "--host", "127.0.0.1")
    assert result.returncode == 1
    assert "address already in use" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [[], ["abc"], ["70000"], ["-1"]])
def test_bad_port_prints_usage_and_exits_2(args):
    result = run_server(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage:") and "Traceback" not in result.stderr


@pytest.mark.server_args("--rate", "0", "--max-per-ip", "0", "--connect-rate", "0")
def test_many_connections_past_the_select_limit(server):
    wanted = 1500
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    selector = selectors.DefaultSelector()
    socks = []
    try:
        for i in range(wanted):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(proto.encode(proto.Hello(f"n{i}")))
            socks.append(sock)
        last = RawClient(server.port, "last")
        last.expect(join("last"), timeout=60)
        last.chat("to all 1501")
        packet = proto.encode(proto.ChatFrom("last", "to all 1501"))
        buffers = {}
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
            buffers[sock] = b""
        deadline = time.monotonic() + 60
        done = set()
        while len(done) < wanted and time.monotonic() < deadline:
            for key, _ in selector.select(1):
                sock = key.fileobj
                data = sock.recv(1 << 16)
                buffers[sock] += data
                if packet in buffers[sock]:
                    done.add(sock)
                    selector.unregister(sock)
        assert len(done) == wanted
        assert max(s.fileno() for s in socks) > 1024
    finally:
        for sock in socks:
            sock.close()
        selector.close()


def test_random_garbage_from_several_connections_then_chat_works(server):
    rng = random.Random(1234)
    for round_number in range(30):
        sock = socket.create_connection(("127.0.0.1", server.port))
        if rng.random() < 0.5:
            sock.sendall(proto.encode(proto.Hello(f"g{round_number}")))
        for _ in range(rng.randint(1, 6)):
            choice = rng.random()
            if choice < 0.3:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
            elif choice < 0.7:
                data = proto.frame(json.dumps(random_json(rng)).encode())
            else:
                data = proto.frame(bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 50))))
            try:
                sock.sendall(data)
            except OSError:
                break
        sock.close()
    pat = RawClient(server.port, "pat")
    chris = RawClient(server.port, "chris")
    pat.expect(join("chris"))
    pat.chat("still alive?")
    chris.expect(chat_from("pat", "still alive?"))
    assert server.proc.poll() is None


def random_json(rng, depth=0):
    kinds = ["str", "int", "list", "obj", "null", "typed"]
    kind = rng.choice(kinds if depth < 3 else kinds[:2])
    if kind == "str":
        return "".join(chr(rng.randint(0, 0x2FFFF)) for _ in range(rng.randint(0, 8))
                       if True).encode("utf-8", "replace").decode("utf-8", "replace")
    if kind == "int":
        return rng.randint(-10**20, 10**20)
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == "null":
        return None
    obj = {rng.choice(["type", "nick", "message", "to", "room", "x"]): random_json(rng, depth + 1)
           for _ in range(rng.randint(0, 4))}
    if kind == "typed":
        obj["type"] = rng.choice(["hello", "chat", "dm", "emote", "who", "enter", "rooms", "zzz"])
    return obj
