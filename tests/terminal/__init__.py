"""Drive the real client in a pseudo-terminal and read its screen with pyte."""

from __future__ import annotations

import atexit
import json
import os
import re
import shlex
import signal
import sys
import time
from typing import Callable

import pexpect
import pyte
import pytest

from tests.support import DEFAULT_TIMEOUT, ROOT
from tests.terminal.launcher import READY

LAUNCHER = ROOT / "tests" / "terminal" / "launcher.py"

# A terminal test of the client's logic rather than of its drawing runs under
# one UI: both backends show the same lines through the same core
# (termchat/ui/screen.py), and that logic has its unit tests
# (tests/unit/test_client_core.py, test_client_session.py).  What the backends do
# differently (keys, drawing, colours, resizing, restoring the terminal) and
# each finding of issue 20 run under both.
one_ui = pytest.mark.parametrize("ui", ["curses"])

APP_CURSOR_MODE = 1 << 5  # pyte's flag for DECCKM (ESC[?1h), set by curses' keypad mode

KEYS = {
    # name: (normal mode, application cursor mode)
    "left": ("\x1b[D", "\x1bOD"), "right": ("\x1b[C", "\x1bOC"),
    "up": ("\x1b[A", "\x1bOA"), "down": ("\x1b[B", "\x1bOB"),
    "home": ("\x1b[H", "\x1bOH"), "end": ("\x1b[F", "\x1bOF"),
    "pageup": ("\x1b[5~", "\x1b[5~"), "pagedown": ("\x1b[6~", "\x1b[6~"),
    "delete": ("\x1b[3~", "\x1b[3~"), "backspace": ("\x7f", "\x7f"),
    "enter": ("\r", "\r"), "tab": ("\t", "\t"),
    "ctrl-a": ("\x01", "\x01"), "ctrl-c": ("\x03", "\x03"), "ctrl-d": ("\x04", "\x04"),
    "ctrl-e": ("\x05", "\x05"), "ctrl-k": ("\x0b", "\x0b"), "ctrl-u": ("\x15", "\x15"),
    "ctrl-w": ("\x17", "\x17"), "ctrl-z": ("\x1a", "\x1a"),
}


class ScrollingScreen(pyte.Screen):
    """pyte's screen plus SU and SD (CSI n S / CSI n T): ncurses scrolls a
    region by several lines with them, and pyte ignores them, which shows a
    garbled screen where a real terminal shows the right one."""

    def _scroll(self, count: int, at_bottom: bool, step) -> None:
        top, bottom = self.margins or pyte.screens.Margins(0, self.lines - 1)
        saved = self.cursor.y
        self.cursor.y = bottom if at_bottom else top
        for _ in range(max(1, count or 1)):
            step()
        self.cursor.y = saved

    def scroll_up(self, count: int = 1, *_: object, **__: object) -> None:
        self._scroll(count, True, self.index)

    def scroll_down(self, count: int = 1, *_: object, **__: object) -> None:
        self._scroll(count, False, self.reverse_index)


class ScrollingStream(pyte.ByteStream):
    csi = dict(pyte.ByteStream.csi, S="scroll_up", T="scroll_down")


class TerminalClient:
    """chat_client.py in a pty of a fixed size, rendered by a terminal emulator."""

    def __init__(self, nick: str, port: int, ui: str, rows: int = 24, cols: int = 80,
                 extra: tuple[str, ...] = (), then_stty: bool = False,
                 host: str = "127.0.0.1", program: tuple[str, ...] = (),
                 env: dict[str, str] | None = None, command: tuple[str, ...] = ()) -> None:
        arguments = [nick, host, str(port), "--ui", ui, *extra]
        client = [*(program or (sys.executable, str(ROOT / "chat_client.py"))), *arguments]
        env = client_environment(env)
        if command:  # something else (a shell) that will run the client
            self.child = pexpect.spawn(command[0], list(command[1:]), dimensions=(rows, cols),
                                       env=env, cwd=str(ROOT))
            self.command_line = shlex.join(client)
        elif then_stty:  # after the client, report its status and the tty modes
            script = shlex.join(client) + '; echo "EXIT=$?"; stty -a; sleep 30'
            self.child = pexpect.spawn("bash", ["-c", script], dimensions=(rows, cols),
                                       env=env, cwd=str(ROOT))
        elif program:
            self.child = pexpect.spawn(client[0], client[1:], dimensions=(rows, cols),
                                       env=env, cwd=str(ROOT))
        else:  # chat_client.py itself, started while the previous test ran
            self.child = SPARE_CLIENTS.take(env, rows, cols)
            self.child.sendline(json.dumps(arguments))
        self.child.delaybeforesend = None  # keys go at once (a whole sequence per send)
        self.child.ptyproc.delayafterclose = 0
        self.nick = nick
        self.screen = ScrollingScreen(cols, rows)
        self.stream = ScrollingStream(self.screen)
        self.raw = bytearray()
        self.eof = False

    # ---- reading the screen ----

    def pump(self, timeout: float = 0.05) -> None:
        try:
            data = self.child.read_nonblocking(1 << 16, timeout=timeout)
        except pexpect.TIMEOUT:
            return
        except pexpect.EOF:
            self.eof = True
            return
        self.raw += data
        self.stream.feed(data)

    @property
    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen.display]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    @property
    def cursor(self) -> tuple[int, int]:
        return self.screen.cursor.y, self.screen.cursor.x

    def describe(self) -> str:
        return (f"--- screen of {self.nick} (cursor at {self.cursor}) ---\n"
                + "\n".join(f"{i:2}|{line}" for i, line in enumerate(self.lines)))

    def wait_for(self, condition: Callable[["TerminalClient"], bool],
                 timeout: float = DEFAULT_TIMEOUT, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or condition}\n"
                                     + self.describe())
            if self.eof:
                time.sleep(0.01)
            self.pump()

    def wait_quiet(self, quiet: float = 0.5, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Wait until the client writes nothing for `quiet` seconds (an idle
        client must not keep redrawing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = len(self.raw)
            self.pump(quiet)
            if len(self.raw) == before:
                return
        raise AssertionError("the client keeps writing while idle\n" + self.describe())

    def wait_for_text(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.wait_for(lambda t: text in t.text, timeout, repr(text))

    def wait_for_line(self, pattern: str, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait until a whole screen row matches the regex; return its index."""
        regex = re.compile(pattern)
        found: list[int] = []

        def matches(term: "TerminalClient") -> bool:
            found[:] = [i for i, line in enumerate(term.lines) if regex.fullmatch(line)]
            return bool(found)

        self.wait_for(matches, timeout, f"a row matching {pattern!r}")
        return found[0]

    def wait_for_prompt(self, text: str = "", timeout: float = DEFAULT_TIMEOUT) -> None:
        """The input row (the last row) shows the prompt and text, with the
        cursor right after the text."""
        wanted = f"{self.prompt}{text}"
        self.wait_for(lambda t: t.lines[-1] == wanted.rstrip()
                      and t.cursor[0] == t.screen.lines - 1,
                      timeout, f"input row {wanted!r}")

    prompt_room = ""

    @property
    def prompt(self) -> str:
        return f"{self.nick} [{self.prompt_room}]> " if self.prompt_room else f"{self.nick}> "

    # ---- typing ----

    def type(self, text: str) -> None:
        self.child.send(text.encode("utf-8"))

    def key(self, name: str, times: int = 1) -> None:
        normal, application = KEYS[name]
        self.pump(0.01)
        sequence = application if APP_CURSOR_MODE in self.screen.mode else normal
        self.child.send(sequence * times)

    def say(self, line: str) -> None:
        self.type(line)
        self.key("enter")

    def resize(self, rows: int, cols: int) -> None:
        self.screen.resize(rows, cols)
        self.child.setwinsize(rows, cols)

    # ---- ending ----

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        while not self.eof and time.monotonic() < deadline:
            self.pump(0.1)
        self.child.close()
        assert self.eof, "client did not exit\n" + self.describe()
        return self.child.exitstatus

    def wait_exit_status_line(self, timeout: float = DEFAULT_TIMEOUT) -> tuple[int, str]:
        """With then_stty: the client's exit status and `stty -a` afterwards."""
        def reported(term: "TerminalClient") -> bool:
            match = re.search(rb"EXIT=(\d+)", term.raw)
            return bool(match) and b"extproc" in term.raw[match.end():]

        self.wait_for(reported, timeout, "the exit status and stty -a")
        match = re.search(rb"EXIT=(\d+)", self.raw)
        return int(match.group(1)), self.raw[match.end():].decode("utf-8", "replace")

    def close(self) -> None:
        end(self.child)


def end(child: pexpect.spawn) -> None:
    """End the client (or the shell running it: SIGHUP, as when its terminal
    goes away; SIGKILL if that does not do) without pexpect's fixed waits."""
    if child.isalive():
        child.kill(signal.SIGHUP)
        deadline = time.monotonic() + 2
        while child.isalive() and time.monotonic() < deadline:
            time.sleep(0.005)
        if child.isalive():
            child.kill(signal.SIGKILL)
    child.close(force=True)


def client_environment(extra: dict[str, str] | None) -> dict[str, str]:
    """The test's environment for the client: a terminal like xterm, in
    UTF-8, in colour (and without pytest's name of the current test, which
    changes with each test and would keep a spare client from fitting).  No
    LINES or COLUMNS (pytest-xdist's workers have them): ncurses would take
    them over the pty's own size."""
    base = {k: v for k, v in os.environ.items()
            if k not in ("NO_COLOR", "PYTEST_CURRENT_TEST", "LINES", "COLUMNS")}
    return dict(base, TERM="xterm", LANG="C.UTF-8", LC_ALL="C.UTF-8", **(extra or {}))


class SpareClients:
    """The client started ahead (tests/terminal/launcher.py): a test's
    client then does not wait for the interpreter's start and the client's
    imports (0.2 s of each terminal test's 0.45 s), which happen while the
    previous test runs.  One spare at a time, for the usual environment;
    it is given the test's terminal size before it is told its command line."""

    def __init__(self) -> None:
        self._spare: tuple[dict[str, str], pexpect.spawn] | None = None

    def take(self, env: dict[str, str], rows: int, cols: int) -> pexpect.spawn:
        spare, self._spare = self._spare, None
        if spare is not None and spare[0] == env and spare[1].isalive():
            child = spare[1]
        else:
            if spare is not None:
                end(spare[1])
            child = self._start(env)
        self._spare = (env, self._start(env))  # the next client's, meanwhile
        child.setwinsize(rows, cols)
        self._wait_ready(child)
        return child

    @staticmethod
    def _start(env: dict[str, str]) -> pexpect.spawn:
        child = pexpect.spawn(sys.executable, [str(LAUNCHER)], dimensions=(24, 80), env=env,
                              cwd=str(ROOT))
        child.delaybeforesend = None
        child.ptyproc.delayafterclose = 0
        return child

    @staticmethod
    def _wait_ready(child: pexpect.spawn) -> None:
        said = b""
        deadline = time.monotonic() + DEFAULT_TIMEOUT
        while READY not in said:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"the client's launcher is not ready: {said!r}")
            try:
                said += child.read_nonblocking(1 << 16, timeout=remaining)
            except pexpect.EOF:
                raise AssertionError(f"the client's launcher ended: {said!r}") from None
            except pexpect.TIMEOUT:
                pass
        assert said.endswith(READY), f"the launcher wrote more than it should: {said!r}"

    def close(self) -> None:
        if self._spare is not None:
            end(self._spare[1])
            self._spare = None


SPARE_CLIENTS = SpareClients()
atexit.register(SPARE_CLIENTS.close)


def cooked_mode_with_echo(stty_output: str) -> bool:
    flags = set(stty_output.split())
    return {"icanon", "echo", "isig", "icrnl", "opost"} <= flags


def lines_from_chris(terminal, connect, count: int):
    """A client pat in a pty, and a raw client chris who has said ``count``
    lines (``line 000``...) that pat shows: (TerminalClient, RawClient)."""
    term = terminal("pat")
    term.wait_for_prompt()
    chris = connect("chris")
    for i in range(count):
        chris.chat(f"line {i:03}")
    term.wait_for_text(f"chris: line {count - 1:03}")
    return term, chris


def server_gone(server, term) -> int:
    """Stop the test's server and see the client notice; its port, for
    another server to start on."""
    port = server.port
    server.stop()
    term.wait_for_text("*** connection lost; reconnecting...")
    return port


def with_chris(terminal, connect, nick: str = "pat"):
    """A client `nick` in a pty and a raw client `chris` that joined after it
    (so its join is on the screen): (TerminalClient, RawClient)."""
    term = terminal(nick)
    term.wait_for_text(f"{nick} has joined")
    chris = connect("chris")
    term.wait_for_text("chris has joined")
    return term, chris
