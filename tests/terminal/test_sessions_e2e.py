"""The terminal client's sessions in a real pty (both UIs): a dropped
connection is resumed unseen, with the missed messages shown once."""

import socket
import threading

import pytest

from tests.support import RawClient, ServerProcess, chat_from, join, wait_for
from tests.terminal import one_ui, server_gone
from tests.terminal.test_client_e2e import scripted  # noqa: F401  (a fixture)


class CuttableProxy:
    """Forwards loopback connections to a port; cut() resets them all and
    stops listening until reopen(), as a network outage would."""

    def __init__(self, target_port):
        self.target = target_port
        self.port = 0
        self.pairs = []
        self.listener = None
        self.reopen()

    def reopen(self):
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener):
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass

    def cut(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread in accept()
        except OSError:
            pass
        self.listener.close()
        for pair in self.pairs:
            for sock in pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked reading it
                except OSError:
                    pass
                sock.close()
        self.pairs = []


@one_ui
def test_a_dropped_connection_resumes_unseen_with_the_missed_lines(server, terminal, connect):
    proxy = CuttableProxy(server.port)
    try:
        term = terminal("pat", port=proxy.port)
        term.wait_for_text("*** pat has joined the chat")
        chris = connect("chris")
        term.wait_for_text("*** chris has joined the chat")
        term.type("half typed")
        proxy.cut()
        term.wait_for_text("*** connection lost; reconnecting...")
        wait_for(lambda: "detach pat" in server.log_text(), describe=server.log_text)
        chris.chat("while you were away")
        chris.send({"type": "dm", "to": "pat", "message": "psst"})
        proxy.reopen()
        term.wait_for_text("*** reconnected", timeout=20)
        term.wait_for_text("chris -> pat: psst")
        assert term.text.count("chris: while you were away") == 1
        assert "lost" not in term.lines[-3]
        term.wait_for_prompt("half typed")
        term.key("enter")
        chris.expect(chat_from("pat", "half typed"))
        assert [m for m in chris.received if m.get("nick") == "pat"
                and m["type"] in ("join", "leave")] == []
        assert join("pat") not in chris.received
    finally:
        proxy.cut()


@one_ui
def test_q_sends_quit_to_a_server_that_granted_a_session(pty_client, scripted):  # noqa: F811
    term = pty_client("pat", scripted.port)
    wait_for(lambda: scripted.packets(), describe=term.describe)
    scripted.send({"type": "join", "nick": "pat", "id": "1", "time": 1.0})
    scripted.send({"type": "session", "token": "secret-token", "grace": 60})
    scripted.send({"type": "info", "message": "after the session"})
    term.wait_for_text("*** after the session")  # the client has read the token
    term.say("/q")
    assert term.wait_exit() == 0
    wait_for(lambda: {"type": "quit"} in scripted.packets(), describe=term.describe)
    assert "secret-token" not in term.text


def test_after_a_server_restart_the_prompt_and_the_server_agree_on_the_room(server, terminal):
    """Issue 20, finding 3: the prompt kept a room the restarted server had
    forgotten; the client now goes back to it."""
    term = terminal("pam")
    term.wait_for_prompt()
    term.say("/join games")
    term.prompt_room = "games"
    term.wait_for_prompt()
    again = ServerProcess(port=server_gone(server, term))
    try:
        term.wait_for_text("*** reconnected; messages sent while you were away are lost",
                           timeout=20)
        term.wait_for(lambda t: t.text.count("*** pam entered room games") == 2,
                      what="the room entered again")
        term.wait_for_prompt()
        term.say("/who")
        term.wait_for_text("*** in games: pam")
        watcher = RawClient(again.port, "watcher")
        watcher.expect(join("watcher"))
        watcher.send({"type": "enter", "room": "games"})
        term.wait_for_text("*** watcher entered room games")
        term.say("still in games")
        watcher.expect(chat_from("pam", "still in games"))
        watcher.close()
    finally:
        again.cleanup()


@pytest.mark.server_args("--rate", "0")
def test_page_up_at_the_top_brings_older_history_until_its_start(terminal, connect):
    """SPEC "Durable state": the client asks for history when PageUp
    reaches the top of its scrollback, and says where it starts."""
    chris = connect("chris")
    for number in range(60):
        chris.chat(f"old {number:03}")
    chris.expect(chat_from("chris", "old 059"))
    term = terminal("pat")
    term.wait_for_text("chris: old 059")  # the newest 20 came with the join
    assert "old 039" not in term.text
    start = "*** the history of lobby starts here"
    for _ in range(6):
        top = term.lines[0]
        term.key("pageup")
        term.wait_for(lambda t: start in t.text or t.lines[0] != top, what="a page up")
        term.wait_quiet(0.1)
        if start in term.text:
            break
    assert term.lines[0] == start
    shown = term.lines[:-1]
    while "scrolled up" in term.lines[-1]:  # page down to the end, a page at a time
        first, last = term.lines[0], term.lines[-2]
        term.key("pagedown")
        term.wait_for(lambda t: t.lines[0] != first, what="a page down")
        term.wait_quiet(0.1)  # the input row too (it says whether still scrolled)
        rows = term.lines[:-1]
        shown += rows[rows.index(last) + 1:]  # what was already in view is not counted twice
    said = [line for line in shown if line.startswith("chris: ")]
    assert said == [f"chris: old {number:03}" for number in range(60)]  # each once, in order
