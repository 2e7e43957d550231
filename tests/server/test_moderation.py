"""A server password, a message of the day and operators over real sockets,
with the secrets read from files."""


import pytest

from tests.support import RawClient, ServerProcess, join, leave, run_server


@pytest.fixture
def guarded(tmp_path):
    (tmp_path / "password").write_text("sesame\n")
    (tmp_path / "ops").write_text("opsecret\n")
    (tmp_path / "motd").write_text("Welcome to the test server.\nBe kind.\n")
    process = ServerProcess("--password-file", str(tmp_path / "password"),
                            "--op-password-file", str(tmp_path / "ops"),
                            "--motd", str(tmp_path / "motd"))
    yield process
    process.cleanup()


def hello(port, nick, password="sesame"):
    client = RawClient(port)
    client.nick = nick
    client.send({"type": "hello", "nick": nick, "password": password})
    return client


def test_password_motd_op_kick_and_ban_over_sockets(guarded):
    wrong = hello(guarded.port, "eve", password="guess")
    assert wrong.expect(lambda m: True) == {"type": "error", "message": "wrong server password",
                                            "code": "wrong-password"}
    wrong.expect_closed()
    op = hello(guarded.port, "op")
    op.expect(join("op"))
    assert [op.expect(lambda m: True)["message"] for _ in range(2)] == [
        "Welcome to the test server.", "Be kind."]
    lee = hello(guarded.port, "lee")
    lee.expect(join("lee"))
    op.send({"type": "op", "password": "opsecret"})
    op.expect({"type": "info", "message": "you are an operator now"})
    op.send({"type": "ban", "nick": "lee", "minutes": 5, "reason": "testing"})
    kicked = {"type": "kick", "nick": "lee", "by": "op", "reason": "banned for 5 minutes: testing"}
    op.expect(kicked)
    op.expect(leave("lee"))
    lee.expect(kicked)
    assert lee.expect(lambda m: True) == {"type": "error", "code": "banned",
                                          "message": "you were kicked by op "
                                                     "(banned for 5 minutes: testing)"}
    lee.expect_closed()
    back = hello(guarded.port, "lee")
    refused = back.expect(lambda m: True)
    assert refused["code"] == "banned" and "banned" in refused["message"]
    assert "sesame" not in guarded.log_text() and "opsecret" not in guarded.log_text()


def test_an_unreadable_secret_file_is_refused_at_start_up(tmp_path):
    result = run_server("0", "--password-file", str(tmp_path / "missing"))
    assert result.returncode == 2 and "cannot read the password file" in result.stderr


def test_the_client_asks_for_the_server_password(guarded, ui):
    from tests.terminal import TerminalClient
    term = TerminalClient("pat", guarded.port, ui)
    asked = f"password for 127.0.0.1:{guarded.port}: "
    try:
        term.wait_for_text("*** error: this server needs a server password")
        term.wait_for(lambda t: t.lines[-1] == asked.rstrip(), what="the password prompt")
        term.type("guess")
        term.wait_for(lambda t: t.lines[-1] == asked + "*****", what="five stars")
        term.key("enter")
        term.wait_for_text("*** error: wrong server password")
        term.type("sesame")
        term.wait_for(lambda t: t.lines[-1] == asked + "******", what="six stars")
        term.key("enter")
        term.wait_for_text("pat has joined the chat")
        term.wait_for_text("Welcome to the test server.")
        term.wait_for_prompt()
        assert "sesame" not in term.text and "guess" not in term.text
        assert "reconnected" not in term.text
        term.key("up")  # the password is not in the history
        term.pump(0.3)
        assert term.lines[-1] == "pat>"
        term.say("/q")
        assert term.wait_exit() == 0
    finally:
        term.close()
