"""The real client in a real pty against the real server, under both UIs;
the screen is read through the pyte terminal emulator."""

import json
import os
import random
import re
import socket
import sys
import threading

import pexpect

import pytest

from termchat.wire import protocol as proto
from tests.support import (DEFAULT_TIMEOUT, ROOT, RawClient, ServerProcess, chat_from, join,
                           leave, wait_for)
from tests.terminal import (TerminalClient, cooked_mode_with_echo, lines_from_chris, one_ui,
                            server_gone, with_chris)


class ScriptedServer:
    """A one-connection fake server that records every byte the client sends."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.received = bytearray()
        self.conn = None
        self.closed_by_client = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        self.listener.settimeout(DEFAULT_TIMEOUT)
        self.conn, _ = self.listener.accept()
        while True:
            try:
                data = self.conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.closed_by_client.set()
                return
            self.received += data

    def packets(self):
        return [json.loads(p) for p in proto.PacketDecoder().feed(bytes(self.received))]

    def send(self, obj):
        wait_for(lambda: self.conn is not None)
        self.conn.sendall(proto.encode_object(obj))

    def close(self):
        if self.conn:
            self.conn.close()
        self.listener.close()


@pytest.fixture
def scripted():
    server = ScriptedServer()
    yield server
    server.close()


@one_ui
def test_hello_first_then_exact_chat_packet_and_quit_sends_nothing(pty_client, scripted):
    term = pty_client("pat", scripted.port)
    wait_for(lambda: scripted.packets(), describe=term.describe)
    raw = bytes(scripted.received)
    assert json.loads(raw[2:2 + int.from_bytes(raw[:2], "big")]) == {
        "type": "hello", "nick": "pat", "session": True}  # always asks; this server never grants
    scripted.send({"type": "join", "nick": "pat"})
    term.wait_for_text("*** pat has joined the chat")
    term.say("hello, world")
    wait_for(lambda: len(scripted.packets()) == 2, describe=term.describe)
    assert scripted.packets()[1] == {"type": "chat", "message": "hello, world"}
    before = bytes(scripted.received)
    term.say("/q")
    assert term.wait_exit() == 0
    assert scripted.closed_by_client.wait(DEFAULT_TIMEOUT)
    assert bytes(scripted.received) == before


@one_ui
def test_unknown_packet_types_are_ignored_and_info_is_shown(pty_client, scripted):
    term = pty_client("pat", scripted.port)
    wait_for(lambda: scripted.packets(), describe=term.describe)
    scripted.send({"type": "join", "nick": "pat"})
    scripted.send({"type": "poke", "nick": "chris"})
    scripted.send({"type": "chat", "nick": 5, "message": "malformed"})
    scripted.send({"type": "info", "message": "the server says hi"})
    scripted.send({"type": "chat", "nick": "chris", "message": "still here", "extra": 1})
    term.wait_for_text("chris: still here")
    assert term.lines[:3] == ["*** pat has joined the chat", "*** the server says hi",
                              "chris: still here"]


@one_ui
def test_garbage_from_the_server_never_crashes_the_client(pty_client, scripted):
    term = pty_client("pat", scripted.port)
    wait_for(lambda: scripted.packets(), describe=term.describe)
    rng = random.Random(7)
    junk = [b"\xff\xfe", b"[" * 3000, b"null", b'{"type": null}', b'{"type": "who"}',
            b'{"type": "rooms", "rooms": [{"name": 1}]}', b'{"type": "dm", "from": "x"}',
            b'{"type": "who", "room": "r", "nicks": "notalist"}',
            b'{"type": "chat", "nick": "\\u001b[2J", "message": "\\ud800"}']
    junk += [bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 200))) for _ in range(50)]
    scripted.conn.sendall(b"".join(proto.frame(payload) for payload in junk))
    scripted.send({"type": "chat", "nick": "chris", "message": "survived"})
    term.wait_for_text("chris: survived")
    term.say("still typing")
    wait_for(lambda: {"type": "chat", "message": "still typing"} in scripted.packets(),
             describe=term.describe)


def test_others_messages_appear_above_the_prompt(terminal, connect):
    term = terminal("pat")
    term.wait_for_text("*** pat has joined the chat")
    chris = connect("chris")
    chris.chat("hi pat")
    chris.close()
    term.wait_for_text("*** chris has left the chat")
    assert term.lines[:4] == ["*** pat has joined the chat", "*** chris has joined the chat",
                              "chris: hi pat", "*** chris has left the chat"]
    term.wait_for_prompt()
    term.wait_quiet()


def test_incoming_message_keeps_half_typed_line_and_cursor(terminal, connect):
    term, chris = with_chris(terminal, connect)
    term.type("half a li")
    term.wait_for_prompt("half a li")
    chris.chat("interrupting!")
    term.wait_for_text("chris: interrupting!")
    term.wait_for_prompt("half a li")
    assert term.cursor == (23, len("pat> half a li"))
    term.type("ne")
    term.key("enter")
    chris.expect(chat_from("pat", "half a line"))


def test_quit_exits_zero_and_restores_the_terminal(terminal, connect):
    watcher = connect("watcher")
    term = terminal("pat", then_stty=True)
    watcher.expect(join("pat"))
    term.wait_for_prompt()  # keys typed before the UI is up are flushed
    term.say("/who")  # answered after the session packet: the client holds its token
    term.wait_for_text("*** in lobby: pat, watcher")
    term.say("/q")
    status, stty = term.wait_exit_status_line()
    assert status == 0
    assert cooked_mode_with_echo(stty), stty
    watcher.expect(leave("pat"))
    assert not any(m["type"] == "chat" for m in watcher.received)


@pytest.mark.parametrize("key", ["ctrl-c", "ctrl-d"])
def test_ctrl_c_and_ctrl_d_exit_cleanly(terminal, key):
    term = terminal("pat", then_stty=True)
    term.wait_for_prompt()
    term.key(key)
    status, stty = term.wait_exit_status_line()
    assert status == 0
    assert cooked_mode_with_echo(stty), stty


def test_ctrl_d_with_text_deletes_instead_of_quitting(terminal, connect):
    term = terminal("pat")
    chris = connect("chris")
    term.wait_for_prompt()
    term.type("abc")
    term.key("home")
    term.key("ctrl-d")
    term.key("enter")
    chris.expect(chat_from("pat", "bc"))


@one_ui
def test_a_restarted_server_is_reconnected_to_with_the_line_kept(server, terminal):
    term = terminal("pat")
    term.wait_for_prompt()
    term.type("half")
    port = server_gone(server, term)
    term.wait_for_prompt("half")
    term.key("enter")
    term.wait_for_text("*** not connected: that was not sent (Up brings it back)")
    again = ServerProcess(port=port)
    try:
        watcher = RawClient(again.port, "watcher")
        term.wait_for_text("*** reconnected; messages sent while you were away are lost",
                           timeout=20)
        term.key("up")
        term.wait_for_prompt("half")
        term.key("enter")
        watcher.expect(chat_from("pat", "half"))
    finally:
        again.cleanup()


@one_ui
def test_a_nick_held_after_a_reconnection_is_waited_for_not_fatal(server, terminal):
    term = terminal("pat")
    term.wait_for_prompt()
    again = ServerProcess(port=server_gone(server, term))
    try:
        squatter = RawClient(again.port, "pat")
        squatter.expect(join("pat"))
        term.wait_for_text("already taken", timeout=20)
        squatter.close()
        term.wait_for_text("*** reconnected; messages sent while you were away are lost",
                           timeout=30)
        term.say("back")
        watcher = RawClient(again.port, "watcher")
        watcher.expect(join("watcher"))
        term.say("still here")
        watcher.expect(chat_from("pat", "still here"))
    finally:
        again.cleanup()


CRASH_ON_INPUT = """
import sys
import chat_client
def crash(self, line):
    raise RuntimeError("boom from a test")
chat_client.ChatClient.handle_line = crash
sys.exit(chat_client.main(sys.argv[1:]))
"""


def test_unexpected_exception_restores_the_terminal_then_shows_the_traceback(terminal):
    term = terminal("pat", then_stty=True, program=(sys.executable, "-c", CRASH_ON_INPUT))
    term.wait_for_prompt()
    term.say("anything")
    status, stty = term.wait_exit_status_line()
    assert status == 1
    assert cooked_mode_with_echo(stty), stty
    output = term.raw.decode("utf-8", "replace")
    restored = max(output.rfind("\x1b[?1049l"), output.rfind("\x1b[?2004l"))
    assert 0 <= restored < output.index("Traceback") < output.index("RuntimeError: boom")


def test_curses_failing_to_start_suggests_the_ansi_ui(server):
    env = dict(os.environ, TERM="no-such-terminal")
    child = pexpect.spawn(sys.executable, ["chat_client.py", "pat", "127.0.0.1",
                                           str(server.port), "--ui", "curses"],
                          env=env, cwd=str(ROOT), dimensions=(24, 80))
    output = child.read().decode()
    child.close()
    assert child.exitstatus == 1
    assert "no-such-terminal" in output and "try --ui ansi" in output
    assert "Traceback" not in output and output.strip().count("\n") <= 1


def test_ctrl_z_suspends_to_the_shell_and_fg_resumes(server, ui, connect):
    shell = ("bash", "--norc", "--noprofile", "-i")
    term = TerminalClient("pat", server.port, ui, command=shell, env={"PS1": "$ "})
    try:
        term.type(term.command_line + "\r")
        term.wait_for_prompt()
        chris = connect("chris")
        term.type("half")
        term.wait_for_prompt("half")
        term.key("ctrl-z")
        term.wait_for_text("Stopped")
        term.type("stty -a\r")
        term.wait_for_text("extproc")
        assert cooked_mode_with_echo(term.text.replace("\n", " ")), term.describe()
        chris.chat("while you were away")
        term.type("fg\r")
        term.wait_for_text("chris: while you were away")
        term.wait_for_prompt("half")
        term.wait_quiet()
        term.type(" done")
        term.key("left", 5)
        term.type(",")
        term.key("enter")
        chris.expect(chat_from("pat", "half, done"))
    finally:
        term.close()


def test_taken_nick_prints_the_error_and_exits_nonzero(terminal, connect):
    connect("pat")
    term = terminal("PAT", then_stty=True)
    status, stty = term.wait_exit_status_line()
    assert status != 0
    assert "already taken" in term.text
    assert cooked_mode_with_echo(stty), stty


def test_escape_sequences_from_the_network_are_shown_escaped(terminal, connect):
    term = terminal("pat")
    term.wait_for_prompt()
    evil = connect("evil")
    evil.chat("\x1b[2J\x1b[H\x1b]0;pwned\x07boom\x9b31m")
    term.wait_for_text("boom")
    row = [line for line in term.lines if "boom" in line][0]
    assert row == "evil: ^[[2J^[[H^[]0;pwned^Gboom<U+009B>31m"
    assert "*** pat has joined the chat" in term.lines[0]
    term.wait_for_prompt()


def test_editing_keys_produce_the_expected_line(terminal, connect):
    term = terminal("pat")
    chris = connect("chris")
    term.wait_for_prompt()
    term.type("wrld")
    term.key("left", 3)
    term.type("o")               # word|rld -> w o rld
    term.key("home")
    term.type("hello ")
    term.key("end")
    term.type("!!")
    term.key("backspace")
    term.key("enter")
    chris.expect(chat_from("pat", "hello world!"))
    term.type("throw this away")
    term.key("ctrl-u")
    term.type("second")
    term.key("enter")
    chris.expect(chat_from("pat", "second"))
    term.key("up", 2)            # history: back to "hello world!"
    term.wait_for_prompt("hello world!")
    term.key("ctrl-w")
    term.type("there")
    term.key("enter")
    chris.expect(chat_from("pat", "hello there"))


def test_non_ascii_input_round_trips(terminal, connect):
    term = terminal("pat")
    chris = connect("chris")
    term.wait_for_prompt()
    for text in ("café crème à la carte", "你好，世界", "party 🎉🎉 time"):
        term.type(text)
        term.wait_for_prompt(text)
        term.key("enter")
        chris.expect(chat_from("pat", text))
        term.wait_for_text(f"pat: {text}")


def test_wide_characters_keep_the_cursor_in_the_right_column(terminal):
    term = terminal("pat")
    term.wait_for_prompt()
    term.type("中文🎉x")
    term.key("left")
    term.wait_for(lambda t: t.cursor == (23, len("pat> ") + 6), what="cursor after 3 wide chars")


@pytest.mark.server_args("--rate", "0", "--max-per-ip", "0")
def test_burst_scrolls_and_page_up_shows_earlier_lines(terminal, connect):
    term, chris = lines_from_chris(terminal, connect, 300)
    assert term.lines[-2] == "chris: line 299"
    assert "chris: line 277" in term.lines[0]
    page = 22  # a page keeps one of the 23 output rows in view
    term.key("pageup")
    term.wait_for(lambda t: t.lines[-2] == f"chris: line {299 - page}", what="one page up")
    term.key("pageup", 2)
    term.wait_for(lambda t: t.lines[-2] == f"chris: line {299 - 3 * page}",
                  what="three pages up")
    term.key("pagedown", 3)
    term.wait_for(lambda t: t.lines[-2] == "chris: line 299", what="back at the bottom")
    term.wait_for_prompt()


def test_long_lines_wrap(terminal, connect):
    term = terminal("pat", cols=40)
    term.wait_for_prompt()
    chris = connect("chris")
    chris.chat("word " * 20 + "END")
    term.wait_for_text("END")
    rows = [line for line in term.lines if "word" in line or "END" in line]
    assert len(rows) >= 3 and all(len(row) <= 40 for row in rows)
    assert " ".join(" ".join(rows).split()) == "chris: " + "word " * 20 + "END"


def test_resize_keeps_the_prompt_on_the_last_row(terminal, connect):
    term = terminal("pat")
    term.wait_for_prompt()
    chris = connect("chris")
    chris.chat("before the resize")
    term.wait_for_text("before the resize")
    term.type("typing")
    term.resize(15, 60)
    term.wait_for(lambda t: t.lines[14] == "pat> typing" and t.cursor == (14, 11),
                  what="prompt on the new last row")
    term.wait_for_text("before the resize")
    term.resize(30, 100)
    term.wait_for(lambda t: t.lines[29] == "pat> typing", what="prompt after growing")
    term.wait_quiet()


def test_tab_completes_nicks_and_commands(terminal, connect):
    term, chris = with_chris(terminal, connect)
    term.type("chr")
    term.key("tab")
    term.wait_for_prompt("chris: ")
    term.type("hi")
    term.key("enter")
    chris.expect(chat_from("pat", "chris: hi"))
    term.type("/he")
    term.key("tab")
    term.wait_for_prompt("/help ")


@one_ui
def test_line_too_long_is_refused_locally(terminal, connect):
    term = terminal("pat")
    chris = connect("chris")
    term.wait_for_prompt()
    term.type("\x1b[200~" + "x" * 70000 + "\x1b[201~")
    term.key("enter")
    term.wait_for_text("message too long")
    term.say("short")
    chris.expect(lambda m: m["type"] == "chat")["message"] == "short"
    assert chris.received[-1] == chat_from("pat", "short")


def test_bracketed_paste_is_not_sent_line_by_line(terminal, connect):
    term = terminal("pat")
    chris = connect("chris")
    term.wait_for_prompt()
    term.type("\x1b[200~first\rsecond\x1b[201~")
    term.wait_for_prompt("first\u21b5second")
    assert not any(m["type"] == "chat" for m in chris.drain(0.3))
    term.key("enter")
    chris.expect(chat_from("pat", "first"))
    chris.expect(chat_from("pat", "second"))


@one_ui
def test_three_clients_see_the_same_conversation(server, ui):
    terms = []
    try:
        for nick in ("ann", "bob", "cat"):
            terms.append(TerminalClient(nick, server.port, ui))
            terms[-1].wait_for_prompt()
        for term in terms:
            term.wait_for_text("cat has joined")
        for term in terms:
            term.say(f"hello from {term.nick}")
            for other in terms:
                other.wait_for_text(f"{term.nick}: hello from {term.nick}")
        conversations = []
        for term in terms:
            lines = [line for line in term.lines[:-1] if line]
            conversations.append(lines[lines.index("*** cat has joined the chat"):])
        assert conversations[0] == conversations[1] == conversations[2]
        assert len(conversations[0]) == 4
    finally:
        for term in terms:
            term.close()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_no_color_by_flag_or_environment(terminal, connect, how):
    options = {"extra": ("--no-color", "--timestamps")} if how == "flag" else \
        {"extra": ("--timestamps",), "env": {"NO_COLOR": "1"}}
    term = terminal("pat", **options)
    term.wait_for_text("pat has joined")
    connect("chris").chat("plain")
    row = term.screen.buffer[term.wait_for_line(r"\d\d:\d\d chris: plain")]
    assert all(row[x].fg == "default" for x in range(6, 11))


def test_nick_colors_are_stable(terminal, connect):
    term = terminal("pat")
    term.wait_for_text("pat has joined")
    chris = connect("chris")
    chris.chat("one")
    chris.chat("two")
    term.wait_for_text("chris: two")
    rows = [term.screen.buffer[i] for i, line in enumerate(term.lines) if line.startswith("chris:")]
    colors = {row[0].fg for row in rows}
    assert len(colors) == 1 and colors != {"default"}


@pytest.mark.server_args("--rate", "0")
def test_while_scrolled_up_the_input_row_counts_new_lines_and_end_returns(terminal, connect):
    """Issue 20, finding 7: new messages arrived unseen while scrolled up."""
    term, chris = lines_from_chris(terminal, connect, 30)
    term.type("half")
    term.key("pageup")
    term.wait_for(lambda t: t.lines[-1].endswith("-- scrolled up (End) --"), what="scrolled")
    chris.chat("new one")
    chris.chat("new two")
    term.wait_for(lambda t: re.fullmatch(r"pat> half +-- 2 new lines below \(End\) --",
                                         t.lines[-1]), what="two new lines counted")
    assert "new one" not in term.text and term.cursor == (23, len("pat> half"))
    assert term.screen.buffer[23][60].reverse  # set apart from the typing
    term.key("end")
    term.wait_for_text("chris: new two")
    term.wait_for_prompt("half")
    term.key("pageup")
    term.wait_for(lambda t: "scrolled up" in t.lines[-1], what="scrolled again")
    term.key("pagedown")
    term.wait_for_prompt("half")


def test_a_flood_of_nicks_from_a_hostile_server_is_bounded(pty_client, scripted):
    """Issue 20, finding 11: 1,000,000 nicks in who packets grew the client
    by 200 MiB and made Tab take seconds.  The client keeps the most
    recently seen names only (100,000 here are enough to show it)."""
    term = pty_client("pat", scripted.port)
    wait_for(lambda: scripted.packets(), describe=term.describe)
    scripted.send({"type": "join", "nick": "pat"})
    term.wait_for_prompt()
    before = resident_kib(term.child.pid)
    names = [f"n{number:07}" for number in range(100_000)]
    flood = b"".join(proto.encode_object({"type": "who", "room": "lobby",
                                          "nicks": names[start:start + 5000]})
                     for start in range(0, len(names), 5000))
    scripted.conn.sendall(flood)
    scripted.send({"type": "chat", "nick": "zz-last", "message": "done"})
    term.wait_for_text("zz-last: done", timeout=30)
    term.type("n0000000")
    term.key("tab")  # the first names sent are forgotten: nothing to complete
    term.type("!")
    term.wait_for_prompt("n0000000!")
    term.key("ctrl-u")
    term.type(names[-1])
    term.key("tab")  # the last ones are kept
    term.wait_for_prompt(names[-1] + ": ")
    grown = resident_kib(term.child.pid) - before
    assert grown < 15 * 1024, f"the client grew by {grown} KiB"  # unbounded: 22 MiB, bounded: 7


def resident_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])
