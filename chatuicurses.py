"""The curses terminal backend, on the uni-curses package (ncursesw).

Two windows: the output rows above and the input row at the bottom.  Only
the thread in ``read_command`` touches curses.  Keys are read with
``wget_wch`` through a 32-bit ``wint_t`` (uni-curses' own wrapper truncates
to 16 bits, which breaks emoji and cannot tell function keys from text).
Exposes ``init_windows``, ``read_command``, ``print_message`` and
``end_windows`` (plus ``stop_input``).  Knows nothing of packets.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import termios
from typing import Iterable

from termchat.ui import screen as core


class CursesUnavailable(core.TerminalUnsuitable):
    """curses cannot run here (no ncurses library, or an unusable TERM)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, other_ui_may_work=True)


OK, ERR = 0, -1
KEY_CODE_YES = 0o400
PASTE_START_CODE, PASTE_END_CODE = 0x7F00, 0x7F01  # our own key codes

_uc = None  # the unicurses module, imported when the screen starts


def _load_curses():
    global _uc
    if _uc is None:
        os.environ.setdefault("ESCDELAY", "100")
        try:
            import unicurses
        except Exception as exc:  # ImportError, OSError from ctypes, ...
            raise CursesUnavailable(f"cannot load ncurses ({exc})") from exc
        _uc = unicurses
    return _uc


def _key_table(uc) -> dict[int, str]:
    return {
        uc.KEY_LEFT: core.LEFT, uc.KEY_RIGHT: core.RIGHT, uc.KEY_UP: core.UP,
        uc.KEY_DOWN: core.DOWN, uc.KEY_HOME: core.HOME, uc.KEY_END: core.END,
        uc.KEY_BACKSPACE: core.BACKSPACE, uc.KEY_DC: core.DELETE,
        uc.KEY_PPAGE: core.PAGE_UP, uc.KEY_NPAGE: core.PAGE_DOWN,
        uc.KEY_ENTER: core.ENTER,  # not KEY_RESIZE: SIGWINCH is handled in core, and
        # resizeterm() queues a KEY_RESIZE of its own, which would resize forever
        0x222 + 0x30: core.WORD_LEFT, 0x222 + 0x31: core.WORD_RIGHT,
    }


class CursesTerminal:
    """The core.Terminal drawn through ncurses windows."""

    def __init__(self) -> None:
        self.color = True
        self.input_fd = sys.stdin.fileno()
        self._saved_modes: list | None = None
        self._out = self._in = None
        self._keys: dict[int, str] = {}
        self._paste: list[str] | None = None
        self._height, self._width = 24, 80

    # terminal modes
    def setup(self) -> None:
        uc = _load_curses()
        if not os.isatty(self.input_fd) or not os.isatty(sys.stdout.fileno()):
            raise CursesUnavailable("standard input and output must be a terminal")
        error = ctypes.c_int(0)
        if uc.lib1.setupterm(None, sys.stdout.fileno(), ctypes.byref(error)) != OK:
            term = os.environ.get("TERM", "")
            raise CursesUnavailable(f"curses does not know the terminal type TERM={term!r}")
        self._saved_modes = termios.tcgetattr(self.input_fd)
        uc.initscr()
        # ncurses installs its own Ctrl-Z handler; ChatScreen suspends itself.
        signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        uc.raw()
        uc.noecho()
        uc.nonl()
        self._keys = _key_table(uc)
        uc.lib1.define_key(b"\x1b[200~", PASTE_START_CODE)
        uc.lib1.define_key(b"\x1b[201~", PASTE_END_CODE)
        uc.lib1.define_key(b"\x1b[1;5D", 0x222 + 0x30)
        uc.lib1.define_key(b"\x1b[1;5C", 0x222 + 0x31)
        if self.color and uc.has_colors():
            uc.start_color()
            uc.use_default_colors()
            colors = uc.lib1.tigetnum(b"colors")
            for index in (core.INFO_COLOR, core.ERROR_COLOR, *core.NICK_COLORS):
                uc.init_pair(index, index if index < colors else index - 8, -1)
        else:
            self.color = False
        self._make_windows()
        sys.stdout.write("\x1b[?2004h")
        sys.stdout.flush()

    def _make_windows(self) -> None:
        uc = _uc
        self._height, self._width = uc.getmaxyx(uc.stdscr)
        for window in (self._out, self._in):
            if window is not None:
                uc.delwin(window)
        self._out = uc.newwin(max(1, self._height - 1), self._width, 0, 0)
        self._in = uc.newwin(1, self._width, max(0, self._height - 1), 0)
        uc.keypad(self._in, True)
        uc.nodelay(self._in, True)
        uc.wnoutrefresh(uc.stdscr)

    def restore(self) -> None:
        uc = _uc
        try:
            if self._saved_modes is not None:  # initscr() ran
                sys.stdout.write("\x1b[?2004l")
                sys.stdout.flush()
                uc.curs_set(1)
                uc.endwin()
        finally:
            if self._saved_modes is not None:
                termios.tcsetattr(self.input_fd, termios.TCSAFLUSH, self._saved_modes)
                self._saved_modes = None

    def pause(self) -> None:
        sys.stdout.write("\x1b[?2004l")
        sys.stdout.flush()
        _uc.endwin()  # the shell's modes until the next refresh

    def resume(self) -> None:
        sys.stdout.write("\x1b[?2004h")
        sys.stdout.flush()
        _uc.lib1.clearok(_uc.stdscr, True)
        _uc.doupdate()  # ncurses takes the terminal back
        _uc.keypad(self._in, False)  # endwin turned the keypad mode off in the
        _uc.keypad(self._in, True)   # terminal: make ncurses send it again

    def waiting_for_more(self) -> bool:
        return False  # ncurses waits for escape sequences itself (ESCDELAY)

    def beep(self) -> None:
        _uc.beep()

    def size(self) -> tuple[int, int]:
        return self._height, self._width

    def resized(self) -> None:
        uc = _uc
        rows, cols = _terminal_size()
        uc.lib1.resizeterm(rows, cols)
        uc.werase(uc.stdscr)
        self._make_windows()

    # input
    def read_keys(self, final: bool) -> Iterable[str]:
        keys: list[str] = []
        code = ctypes.c_uint32(0)
        while True:
            status = _uc.lib1.wget_wch(self._in, ctypes.byref(code))
            if status == ERR:
                return keys
            key = self._translate(status, code.value)
            if key is not None:
                keys.append(key)

    def _translate(self, status: int, value: int) -> str | None:
        if status == KEY_CODE_YES:
            if value == PASTE_START_CODE:
                self._paste = []
                return None
            if value == PASTE_END_CODE and self._paste is not None:
                text, self._paste = "".join(self._paste), None
                return core.Paste(text)
            return self._keys.get(value)
        char = chr(value)
        if self._paste is not None:
            self._paste.append("\n" if char == "\r" else char)
            return None
        return core.CONTROL_KEYS.get(value, char)

    # output
    def draw(self, rows, prompt, text, column, full, status="") -> None:
        uc = _uc
        if full:
            uc.lib1.clearok(self._out, True)
        if rows is not None:
            uc.werase(self._out)
            for y, row in enumerate(rows):
                uc.wmove(self._out, y, 0)
                for segment, style in row:
                    self._put(self._out, segment, style)
            uc.wnoutrefresh(self._out)
        uc.werase(self._in)
        uc.wmove(self._in, 0, 0)
        self._put(self._in, prompt, "bold")
        self._put(self._in, text, None)
        if status:  # at the right, the last column left free
            uc.wmove(self._in, 0, max(0, self._width - 1 - len(status)))
            self._put(self._in, status, "status")
        column = min(self._width - 1, column)
        uc.wmove(self._in, 0, column)
        uc.wnoutrefresh(self._in)
        uc.doupdate()
        # ncurses moves the cursor relative to where its own (libc) widths
        # say it is; terminals disagree on emoji and flags, so place it
        # absolutely where Unicode's grapheme widths say (ncurses already
        # believes it is there).
        sys.stdout.write(f"\x1b[{self._height};{column + 1}H")
        sys.stdout.flush()

    def _put(self, window, text: str, style: str | None) -> None:
        if not text:
            return
        uc = _uc
        attr = uc.A_NORMAL
        if style == "bold":
            attr = uc.A_BOLD
        elif style == "dim":
            attr = uc.A_DIM
        elif style == "mention":
            attr = uc.A_BOLD | uc.A_REVERSE
        elif style == "status":
            attr = uc.A_REVERSE
        elif self.color:
            index = core.style_key_color(style)
            if index:
                attr = uc.COLOR_PAIR(index)
        uc.wattrset(window, attr)
        uc.lib1.waddwstr(window, ctypes.c_wchar_p(text))
        uc.wattrset(window, uc.A_NORMAL)


def _terminal_size() -> tuple[int, int]:
    size = os.get_terminal_size(sys.stdout.fileno())
    return size.lines, size.columns


def check_terminal() -> None:
    """Raise core.TerminalUnsuitable, before anything is written, if curses
    cannot run on this terminal: it needs ncurses, a TERM it knows, and
    cursor addressing."""
    core.check_terminal_streams()
    uc = _load_curses()
    error = ctypes.c_int(0)
    term = os.environ.get("TERM", "")
    if uc.lib1.setupterm(None, sys.stdout.fileno(), ctypes.byref(error)) != OK:
        raise CursesUnavailable(f"curses does not know the terminal type TERM={term!r}")
    uc.lib1.tigetstr.restype = ctypes.c_void_p
    if uc.lib1.tigetstr(b"cup") in (None, 0, ctypes.c_void_p(-1).value):
        raise core.TerminalUnsuitable(f"the terminal type TERM={term!r} cannot move the cursor")


init_windows, read_command, print_message, end_windows, stop_input, bell, print_older = \
    core.module_functions(CursesTerminal)
