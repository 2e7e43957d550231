"""TLS: the server's non-blocking handshake, the client's certificate and
host name checks, and what a client speaking the wrong one is told.
Certificates are made at test time (trustme)."""

import os
import socket
import ssl
import time

import pytest
import trustme

from tests.support import RawClient, ServerProcess, chat_from, join, run_server, wait_for
from tests.terminal import TerminalClient
from tests.terminal.test_client_cli import run_in_terminal
from tests.cluster.test_cluster import HEARTBEAT, RedisServer  # noqa: F401

NOT_TLS = "this server speaks TLS only: connect with --tls"


@pytest.fixture
def certs(tmp_path):
    """A CA and a certificate from it for localhost; returns their paths."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = ca.issue_cert("localhost")
    server.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other-ca.pem"))
    return tmp_path


def tls_options(certs):
    return ("--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.pem"))


@pytest.fixture
def tls_server(certs, request):
    marker = request.node.get_closest_marker("server_args")
    process = ServerProcess(*tls_options(certs), *(marker.args if marker else ()))
    yield process
    process.cleanup()


class TlsRawClient(RawClient):
    """RawClient over TLS, checking the certificate against the test CA."""

    def __init__(self, port, nick, ca):
        super().__init__(port)
        context = ssl.create_default_context(cafile=str(ca))
        self.sock = context.wrap_socket(self.sock, server_hostname="localhost")
        self.nick = nick
        self.send({"type": "hello", "nick": nick})
        self.expect(join(nick))


@pytest.fixture
def tls_client(certs):
    made = []

    def make(port, nick):
        made.append(TlsRawClient(port, nick, certs / "ca.pem"))
        return made[-1]

    yield make
    for client in made:
        client.close()


def test_tls_clients_chat_and_the_log_says_tls(tls_server, tls_client):
    pat = tls_client(tls_server.port, "pat")
    chris = tls_client(tls_server.port, "chris")
    pat.expect(join("chris"))
    chris.chat("over TLS " + "x" * 40000)  # several TLS records
    pat.expect(chat_from("chris", "over TLS " + "x" * 40000))
    pat.chat("and back")
    chris.expect(chat_from("pat", "and back"))
    assert "(TLS only)" in tls_server.log_text()


def test_a_plain_client_on_the_tls_port_is_told_at_once(tls_server):
    plain = RawClient(tls_server.port, "pat")
    started = time.monotonic()
    assert plain.expect(lambda m: True, timeout=5) == {"type": "error", "message": NOT_TLS,
                                                           "code": "tls-only"}
    plain.expect_closed(timeout=5)
    assert time.monotonic() - started < 3
    plain.close()


@pytest.mark.server_args("--hello-timeout", "1")
def test_a_stalled_handshake_is_cut_by_the_hello_timeout_while_others_chat(
        tls_server, tls_client):
    staller = socket.create_connection(("127.0.0.1", tls_server.port))
    staller.sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, then nothing
    started = time.monotonic()
    pat = tls_client(tls_server.port, "pat")
    chris = tls_client(tls_server.port, "chris")
    for count in range(5):
        chris.chat(f"line {count}")
        pat.expect(chat_from("chris", f"line {count}"))
    staller.settimeout(5)
    assert staller.recv(100) == b""  # cut, with nothing written in the clear
    assert 0.9 < time.monotonic() - started < 3
    staller.close()


@pytest.mark.server_args("--hello-timeout", "1.5")
def test_a_silent_connection_on_the_tls_port_is_told_in_plain_text(tls_server):
    silent = RawClient(tls_server.port)
    silent.nick = "silent"
    assert silent.expect(lambda m: True, timeout=5) == {
        "type": "error", "message": "no hello within 1.5 seconds", "code": "no-hello"}
    silent.expect_closed(timeout=5)
    silent.close()


def test_the_client_refuses_a_certificate_it_cannot_trust(tls_server, certs):
    status, output = run_in_terminal("pat", "localhost", str(tls_server.port),
                                     "--tls-ca", str(certs / "other-ca.pem"))
    assert status == 1 and "certificate is not trusted" in output, output
    status, output = run_in_terminal("pat", "127.0.0.1", str(tls_server.port),
                                     "--tls-ca", str(certs / "ca.pem"))
    assert status == 1 and "certificate is not trusted" in output, output
    assert "127.0.0.1" in output and "Traceback" not in output
    assert "hello pat" not in tls_server.log_text()


def test_a_tls_client_on_a_plain_port_fails_at_once(server, certs):
    started = time.monotonic()
    status, output = run_in_terminal("pat", "localhost", str(server.port),
                                     "--tls-ca", str(certs / "ca.pem"))
    assert status == 1 and "TLS handshake failed" in output, output
    assert time.monotonic() - started < 8
    wait_for(lambda: "does not speak TLS" in server.log_text(), describe=server.log_text)


def test_a_bad_certificate_file_is_refused_at_start_up(tmp_path, certs):
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    for cert, key in (("junk.pem", "junk.pem"), ("missing.pem", "missing.pem")):
        result = run_server("0", "--tls-cert", str(tmp_path / cert),
                            "--tls-key", str(tmp_path / key))
        assert result.returncode == 2 and "TLS certificate" in result.stderr, result.stderr
    result = run_server("0", "--tls-cert", str(certs / "server.pem"))
    assert result.returncode == 2 and "go together" in result.stderr


def test_the_terminal_client_chats_over_tls(tls_server, tls_client, certs, ui):
    term = TerminalClient("pat", tls_server.port, ui, host="localhost",
                          extra=("--tls-ca", str(certs / "ca.pem")))
    try:
        term.wait_for_text("pat has joined the chat")
        chris = tls_client(tls_server.port, "chris")
        term.wait_for_text("chris has joined the chat")
        chris.chat("hello, encrypted pat")
        term.wait_for_text("chris: hello, encrypted pat")
        term.say("hello, encrypted chris")
        chris.expect(chat_from("pat", "hello, encrypted chris"))
        term.say("/q")
        assert term.wait_exit() == 0
    finally:
        term.close()


def test_tls_and_plain_nodes_of_one_cluster_relay_both_ways(certs, tls_client, raw_client):
    redis = RedisServer()
    env = {"CHAT_REDIS_URL": redis.url}
    secure = ServerProcess("--heartbeat", HEARTBEAT, *tls_options(certs), env=env)
    plain = ServerProcess("--heartbeat", HEARTBEAT, env=env)
    try:
        for node in (secure, plain):
            wait_for(lambda: "registered" in node.log_text(), describe=node.log_text)
        pat = tls_client(secure.port, "pat")
        chris = raw_client(plain.port, "chris")
        pat.expect(join("chris"))
        pat.chat("from the TLS side")
        chris.expect(chat_from("pat", "from the TLS side"))
        chris.chat("from the plain side")
        pat.expect(chat_from("chris", "from the plain side"))
    finally:
        secure.cleanup()
        plain.cleanup()
        redis.cleanup()


def reset(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER on, 0 seconds): no FIN, an RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


@pytest.mark.parametrize("first", [b"\x16", b"\x16\x03\x01", b"\x16\x03\x01\x02\x00\x01"])
def test_a_handshake_byte_then_a_reset_costs_that_connection_only(tls_server, tls_client,
                                                                  first):
    pat = tls_client(tls_server.port, "pat")
    for _ in range(5):
        sock = socket.create_connection(("127.0.0.1", tls_server.port))
        sock.sendall(first)
        reset(sock)
    chris = tls_client(tls_server.port, "chris")
    pat.expect(join("chris"))
    chris.chat("still up")
    pat.expect(chat_from("chris", "still up"))
    assert tls_server.proc.poll() is None
    assert "Traceback" not in tls_server.log_text()
