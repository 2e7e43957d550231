"""The client's command line and its packet-to-line formatting."""

import socket
import subprocess
import sys

import pytest

import chat_protocol as proto
from chat_client import format_message
from tests.support import ROOT


def run_client(*args):
    return subprocess.run([sys.executable, "chat_client.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args", [[], ["pat"], ["pat", "localhost"], ["pat", "localhost", "x"],
                                  ["pat", "localhost", "70000"], ["two words", "localhost", "1"],
                                  ["pat", "localhost", "1", "--ui", "gtk"]])
def test_bad_command_line_prints_usage_and_exits_2(args):
    result = run_client(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage:") and "Traceback" not in result.stderr


def test_connection_refused_is_one_line_and_exit_1():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    result = run_client("pat", "127.0.0.1", str(port))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "cannot connect" in result.stderr and "refused" in result.stderr


def test_unknown_host_is_one_line_and_exit_1():
    result = run_client("pat", "no-such-host.invalid", "3490")
    assert result.returncode == 1
    assert result.stderr.startswith("chat_client.py: cannot connect to no-such-host.invalid")
    assert "Traceback" not in result.stderr


def text_of(message):
    return "".join(text for text, _ in format_message(message))


@pytest.mark.parametrize("message, shown", [
    (proto.ChatFrom("pat", "hows it going"), "pat: hows it going"),
    (proto.Joined("leslie"), "*** leslie has joined the chat"),
    (proto.Left("chris"), "*** chris has left the chat"),
    (proto.Error("no such user: lee"), "*** error: no such user: lee"),
    (proto.Info("back in contact"), "*** back in contact"),
    (proto.DirectFrom("pat", "chris", "psst"), "pat -> chris: psst"),
    (proto.EmoteFrom("pat", "waves"), "[pat waves]"),
    (proto.WhoList("lobby", ("chris", "pat")), "*** in lobby: chris, pat"),
    (proto.EnteredRoom("pat", "games"), "*** pat entered room games"),
    (proto.ExitedRoom("pat", "lobby"), "*** pat left room lobby"),
    (proto.RoomList((proto.RoomCount("lobby", 3), proto.RoomCount("games", 1))),
     "*** rooms: lobby (3), games (1)"),
])
def test_every_packet_has_its_display_form(message, shown):
    assert text_of(message) == shown
