"""The client as a newcomer meets it, in a real pty read through pyte (both
UIs): refusing to start before anyone sees a join, waiting for a silent
server, whole characters in the editor, mentions and the log file."""

import os
import re
import socket
import subprocess
import sys
import threading
import time

import pexpect
import pytest

from tests.support import DEFAULT_TIMEOUT, ROOT, chat_from, join, wait_for
from tests.terminal import TerminalClient, one_ui, with_chris


def no_join_of(watcher, nick):
    """The watcher sees its own marker chat and never a join of nick."""
    watcher.chat("marker")
    watcher.expect(chat_from(watcher.nick, "marker"))
    assert join(nick) not in watcher.received


@pytest.mark.parametrize("ui", ["curses", "ansi"])
def test_without_a_terminal_the_client_never_joins_and_writes_nothing(server, connect, ui):
    watcher = connect("watcher")
    result = subprocess.run([sys.executable, "chat_client.py", "ghost", "127.0.0.1",
                             str(server.port), "--ui", ui], cwd=ROOT, capture_output=True,
                            stdin=subprocess.DEVNULL, timeout=30)
    assert result.returncode == 1
    assert result.stdout == b""
    error = result.stderr.decode()
    assert error.count("\n") == 1 and "must be a terminal" in error and "--ui" not in error
    no_join_of(watcher, "ghost")


def spawn_client(port, ui, term, nick="ghost"):
    child = pexpect.spawn(sys.executable, ["chat_client.py", nick, "127.0.0.1", str(port),
                                           "--ui", ui], cwd=str(ROOT), dimensions=(24, 80),
                          env=dict(os.environ, TERM=term), timeout=DEFAULT_TIMEOUT)
    output = child.read()
    child.close()
    return child.exitstatus, output


def test_an_unknown_terminal_type_suggests_the_ansi_ui_and_never_joins(server, connect):
    watcher = connect("watcher")
    status, output = spawn_client(server.port, "curses", "no-such-terminal")
    text = output.decode()
    assert status == 1 and b"\x1b" not in output
    assert "no-such-terminal" in text and "try --ui ansi" in text and text.count("\n") == 1
    no_join_of(watcher, "ghost")


@pytest.mark.parametrize("ui", ["curses", "ansi"])
def test_term_dumb_is_refused_with_a_clear_line(server, connect, ui):
    watcher = connect("watcher")
    status, output = spawn_client(server.port, ui, "dumb")
    text = output.decode()
    assert status == 1 and b"\x1b" not in output
    assert "TERM='dumb' cannot move the cursor" in text and "--ui ansi" not in text
    no_join_of(watcher, "ghost")


class Listener:
    """A port that accepts connections and never says a word; with
    ``hang_up``, it reads the hello and closes (a service that is not a chat
    server, or one at capacity that closes without a word)."""

    def __init__(self, hang_up=False):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.hang_up = hang_up
        self.hung_up = 0
        self.accepted = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        self.sock.settimeout(0.05)
        while not self.stop.is_set():
            try:
                conn = self.sock.accept()[0]
            except OSError:
                continue
            if self.hang_up:
                conn.settimeout(DEFAULT_TIMEOUT)
                conn.recv(1 << 16)
                conn.close()
                self.hung_up += 1
            else:
                self.accepted.append(conn)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        for sock in self.accepted:
            sock.close()
        self.sock.close()


@pytest.fixture
def listener():
    made = []

    def make(**options):
        made.append(Listener(**options))
        return made[-1]

    yield make
    for each in made:
        each.close()


def test_a_server_that_never_answers_gets_a_notice_then_the_client_gives_up(listener, ui):
    """The timing (3 s, then 10 s) is the session's, tested without a terminal
    (tests/unit/test_client_session.py); here the same path with shorter waits."""
    port = listener().port
    term = TerminalClient("pat", port, ui, then_stty=True, extra=("--answer-timeout", "1"))
    try:
        started = time.monotonic()
        where = f"127.0.0.1:{port}"
        term.wait_for_text(f"*** waiting for {where} to answer...")
        noticed = time.monotonic() - started
        status, _ = term.wait_exit_status_line()
        assert status == 1
        assert noticed < 1 < time.monotonic() - started
        assert f"no answer from {where}: is it a chat server?" in term.text
    finally:
        term.close()


def test_a_server_that_closes_before_answering_is_said_so_then_given_up_on(listener, ui):
    """Issue 20, finding 4: the client showed nothing at all."""
    closing = listener(hang_up=True)
    port = closing.port
    term = TerminalClient("pat", port, ui, then_stty=True, extra=("--answer-timeout", "1"))
    try:
        where = f"127.0.0.1:{port}"
        term.wait_for_text(f"*** {where} closed the connection before answering: is it a "
                           "chat server?", timeout=1.0)
        term.wait_for_text(f"*** waiting for {where} to answer...")
        wait_for(lambda: closing.hung_up >= 2, describe=term.describe)  # tried again
        term.pump()
        assert term.text.count("closed the connection before answering") == 1
        status, _ = term.wait_exit_status_line()
        assert status == 1 and f"no answer from {where}: is it a chat server?" in term.text
    finally:
        term.close()


CLUSTERS = [("\U0001F44D\U0001F3FD", 2), ("\U0001F1EF\U0001F1F5", 2),
            ("\U0001F468\u200d\U0001F469\u200d\U0001F467", 2), ("e\u0301", 1),
            ("\u1100\u1161\u11a8", 2)]


def test_backspace_and_arrows_move_over_whole_characters(terminal, connect):
    """Each cluster in turn, in one client (a client per cluster only
    repeated its start-up)."""
    term, chris = with_chris(terminal, connect)
    prompt = len(term.prompt)
    for cluster, width in CLUSTERS:
        term.type(f"a{cluster}x")
        term.wait_for(lambda t: t.cursor == (23, prompt + 2 + width), what=f"{cluster!r} typed")
        term.key("left", 2)
        term.wait_for(lambda t: t.cursor == (23, prompt + 1), what="two clusters left")
        term.key("right")
        term.wait_for(lambda t: t.cursor == (23, prompt + 1 + width), what="one cluster right")
        term.key("end")
        term.key("backspace", 2)
        term.wait_for(lambda t: t.cursor == (23, prompt + 1), what="two clusters deleted")
        term.type(f"b{cluster}")
        term.key("backspace")
        term.key("enter")
        chris.expect(chat_from("pat", "ab"))


def test_a_line_that_names_you_is_highlighted(terminal, connect):
    term, chris = with_chris(terminal, connect)
    chris.chat("hey Pat, look at this")
    chris.chat("nothing for you")
    row = term.wait_for_line(r"chris: hey Pat, look at this")
    other = term.wait_for_line(r"chris: nothing for you")
    line = term.screen.buffer[row]
    text_cells = [line[x] for x in range(len("chris: "), len("chris: hey Pat, look at this"))]
    assert all(cell.bold and cell.reverse for cell in text_cells)
    assert not any(term.screen.buffer[other][x].reverse for x in range(20))


@one_ui
def test_the_log_file_gets_every_line_with_its_date_and_time(terminal, connect, tmp_path):
    log = tmp_path / "chat.log"
    term = terminal("pat", extra=("--log", str(log)))
    term.wait_for_text("pat has joined")
    chris = connect("chris")
    chris.chat("hello \x1b[2J there")
    term.wait_for_text("chris: hello")
    term.say("/q")
    term.wait_exit()
    lines = log.read_text(encoding="utf-8").splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert [re.sub(stamp, "", line, count=1) for line in lines] == [
        "*** pat has joined the chat", "*** chris has joined the chat",
        "chris: hello ^[[2J there"]
    assert all(re.match(stamp, line) for line in lines)


def test_bell_rings_on_a_mention_and_a_dm_only(terminal, connect):
    term = terminal("pat", extra=("--bell",))
    term.wait_for_text("pat has joined")
    chris = connect("chris")
    term.wait_for_text("chris has joined")
    before = term.raw.count(b"\x07")
    chris.chat("just chatting")
    term.wait_for_text("chris: just chatting")
    term.wait_quiet(0.3)
    assert term.raw.count(b"\x07") == before
    chris.send({"type": "dm", "to": "pat", "message": "psst"})
    term.wait_for_text("chris -> pat: psst")
    term.wait_for(lambda t: t.raw.count(b"\x07") == before + 1, what="a bell")
