"""The plain ANSI-escape terminal backend.

Puts the terminal in raw mode through ``termios``, keeps a scroll region for
the output rows above the input row, decodes key escape sequences itself
(including bracketed paste), and restores everything on the way out.
Exposes ``init_windows``, ``read_command``, ``print_message`` and
``end_windows`` (plus ``stop_input``).  Knows nothing of packets.
"""

from __future__ import annotations

import codecs
import fcntl
import select
import os
import struct
import sys
import termios
from typing import Iterable

from termchat.ui import screen as core

CSI = "\x1b["
PASTE_START, PASTE_END = "\x1b[200~", "\x1b[201~"

# Final byte (or "number~") of CSI / SS3 sequences -> key name.
_CSI_KEYS = {
    "A": core.UP, "B": core.DOWN, "C": core.RIGHT, "D": core.LEFT,
    "H": core.HOME, "F": core.END,
    "1~": core.HOME, "7~": core.HOME, "4~": core.END, "8~": core.END,
    "3~": core.DELETE, "5~": core.PAGE_UP, "6~": core.PAGE_DOWN,
}
_WORD_KEYS = {"C": core.WORD_RIGHT, "D": core.WORD_LEFT}


class KeyDecoder:
    """Turns bytes from the terminal into key names and text.

    Escape sequences may arrive split across reads: an incomplete one stays
    buffered until more bytes come or ``flush`` is called (the wait for the
    rest ran out, so a lone ESC is the Escape key).
    """

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        self._paste: list[str] | None = None

    @property
    def incomplete(self) -> bool:
        return bool(self._buffer) and self._paste is None

    def feed(self, data: bytes) -> list[str]:
        self._buffer += self._utf8.decode(data)
        return self._parse(final=False)

    def flush(self) -> list[str]:
        return self._parse(final=True)

    def _parse(self, final: bool) -> list[str]:
        keys: list[str] = []
        text = self._buffer
        i = 0
        while i < len(text):
            if self._paste is not None:
                end = text.find(PASTE_END, i)
                if end < 0:
                    keep = _partial_suffix(text[i:], PASTE_END)
                    self._paste.append(text[i:len(text) - keep])
                    i = len(text) - keep
                    break
                self._paste.append(text[i:end])
                keys.append(core.Paste("".join(self._paste)))
                self._paste = None
                i = end + len(PASTE_END)
                continue
            char = text[i]
            if char != "\x1b":
                keys.append(core.CONTROL_KEYS.get(ord(char), char))
                i += 1
                continue
            length, key = _escape_sequence(text, i)
            if length == 0:  # incomplete
                if not final:
                    break
                keys.append(core.ESCAPE)
                i += 1
                continue
            i += length
            if key == PASTE_START:
                self._paste = []
            elif key is not None:
                keys.append(key)
        self._buffer = text[i:]
        return keys


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of text that begins marker."""
    for size in range(min(len(marker) - 1, len(text)), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _escape_sequence(text: str, i: int) -> tuple[int, str | None]:
    """(length, key) of the escape sequence at text[i]; length 0 when it is
    not complete yet.  Unknown sequences give key None."""
    if i + 1 >= len(text):
        return 0, None
    kind = text[i + 1]
    if kind == "O":  # SS3: ESC O x
        if i + 2 >= len(text):
            return 0, None
        return 3, _CSI_KEYS.get(text[i + 2])
    if kind != "[":  # Alt+key: ignore the Alt
        return 2, core.CONTROL_KEYS.get(ord(kind), kind)
    j = i + 2
    while j < len(text) and not "\x40" <= text[j] <= "\x7e":
        j += 1
    if j >= len(text):
        return 0, None
    params, final_char = text[i + 2:j], text[j]
    length = j - i + 1
    if final_char == "~":
        if params == "200":
            return length, PASTE_START
        return length, _CSI_KEYS.get(params.split(";")[0] + "~")
    if ";" in params and final_char in _WORD_KEYS:  # e.g. Ctrl-Left ESC[1;5D
        return length, _WORD_KEYS[final_char]
    return length, _CSI_KEYS.get(final_char)


def sgr_for(style: str | None, color: bool) -> str:
    if style == "dim":
        return CSI + "2m"
    if style == "mention":
        return CSI + "1;7m"
    if style == "bold":
        return CSI + "1m"
    if style == "status":
        return CSI + "7m"
    index = core.style_key_color(style) if color else None
    if index is None:
        return ""
    return f"{CSI}{30 + index if index < 8 else 90 + index - 8}m"


class AnsiTerminal:
    """The core.Terminal of plain ANSI escapes on a raw-mode terminal."""

    def __init__(self) -> None:
        self.color = True
        self.input_fd = sys.stdin.fileno()
        self.output_fd = sys.stdout.fileno()
        self._saved_modes: list | None = None  # set while the terminal is ours
        self._keys = KeyDecoder()
        self._height, self._width = self._query_size()

    # terminal modes
    def setup(self) -> None:
        if not os.isatty(self.input_fd):
            raise RuntimeError("standard input is not a terminal")
        self._saved_modes = termios.tcgetattr(self.input_fd)
        modes = termios.tcgetattr(self.input_fd)
        modes[0] &= ~(termios.BRKINT | termios.ICRNL | termios.INPCK
                      | termios.ISTRIP | termios.IXON)
        modes[2] |= termios.CS8
        modes[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN | termios.ISIG)
        modes[6][termios.VMIN] = 1
        modes[6][termios.VTIME] = 0
        termios.tcsetattr(self.input_fd, termios.TCSAFLUSH, modes)
        self._height, self._width = self._query_size()
        self._write("\x1b[?1049h\x1b[?2004h" + CSI + "H" + CSI + "2J")

    def restore(self) -> None:
        if self._saved_modes is None:
            return  # set-up never began: write nothing
        try:
            self._write(CSI + "r" + CSI + "0m\x1b[?2004l\x1b[?25h\x1b[?1049l")
        finally:
            termios.tcsetattr(self.input_fd, termios.TCSAFLUSH, self._saved_modes)
            self._saved_modes = None

    def _query_size(self) -> tuple[int, int]:
        try:
            rows, cols, _, _ = struct.unpack(
                "HHHH", fcntl.ioctl(self.output_fd, termios.TIOCGWINSZ, b"\0" * 8))
        except OSError:
            rows, cols = 0, 0
        return (rows or 24, cols or 80)

    def size(self) -> tuple[int, int]:
        return self._height, self._width

    def pause(self) -> None:
        self.restore()

    def resume(self) -> None:
        self.setup()

    def resized(self) -> None:
        self._height, self._width = self._query_size()

    # input
    def read_keys(self, final: bool) -> Iterable[str]:
        keys: list[str] = []
        try:
            data = os.read(self.input_fd, 4096) if _readable(self.input_fd) else b""
        except OSError:
            data = b""
        if data:
            keys += self._keys.feed(data)
        elif final:
            keys += self._keys.flush()
        return keys

    def waiting_for_more(self) -> bool:
        return self._keys.incomplete

    # output
    def draw(self, rows, prompt, text, column, full, status="") -> None:
        height, width = self._height, self._width
        out = [CSI + "?25l"]
        if full:
            out.append(f"{CSI}1;{max(1, height - 1)}r{CSI}2J")
        if rows is not None:
            for y in range(height - 1):
                out.append(f"{CSI}{y + 1};1H{CSI}2K")
                if y < len(rows):
                    out.append(self._styled(rows[y]))
        out.append(f"{CSI}{height};1H{CSI}2K{CSI}1m{prompt}{CSI}0m{text}")
        if status:  # at the right, the last column left free
            out.append(f"{CSI}{height};{max(1, width - len(status))}H"
                       f"{sgr_for('status', self.color)}{status}{CSI}0m")
        out.append(f"{CSI}{height};{min(width, column + 1)}H{CSI}?25h")
        self._write("".join(out))

    def _styled(self, row: core.Row) -> str:
        parts = []
        for text, style in row:
            sgr = sgr_for(style, self.color)
            parts.append(sgr + text + (CSI + "0m" if sgr else ""))
        return "".join(parts)

    def beep(self) -> None:
        self._write("\a")

    def _write(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        while data:
            written = os.write(self.output_fd, data)
            data = data[written:]


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def check_terminal() -> None:
    """Raise core.TerminalUnsuitable, before anything is written, if this
    terminal cannot run the UI."""
    core.check_terminal_streams()


init_windows, read_command, print_message, end_windows, stop_input, bell, print_older = \
    core.module_functions(AnsiTerminal)
