"""What both terminal backends share, with no terminal in it.

Owns: escaping of control characters, display width and wrapping, the
scrollback model, the line editor (keys, history, completion, paste), the
layout of the input row, and :class:`ChatScreen`, the input loop, which
draws and reads keys through the :class:`Terminal` object a backend gives it.

Threading: only the thread that calls ``read_command`` (the main thread)
draws.  ``print_message`` may be called from any thread: it queues the line
and wakes the input loop through a pipe, which draws every queued line in
one batch.  Knows nothing of packets: a message is text, optionally split
into styled segments.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import signal
import threading
import unicodedata
import zlib
from typing import Callable, Iterable, Protocol, Sequence, Union

import wcwidth

# A piece of text with a style key: None (plain), "info", "error", "dim", "bold", "status",
# "mention" (a line naming the user: bold and reversed), or "nick:NAME" (a
# stable colour chosen from the name).
Segment = tuple[str, Union[str, None]]
Message = Union[str, Sequence[Segment]]
Row = list[Segment]

INFO_COLOR, ERROR_COLOR = 6, 1          # cyan, red: never a nick's colour
NICK_COLORS = (2, 3, 4, 5, 10, 11, 12, 13)  # green, yellow, blue, magenta, and bright ones
SCROLLBACK_LINES = 10000
SCROLLBACK_BYTES = 16 << 20  # of text: no sender can grow a client without limit
ESCAPE_WAIT = 0.15  # seconds to wait for the rest of an escape sequence


class TerminalUnsuitable(RuntimeError):
    """This terminal cannot run the UI; ``other_ui_may_work`` says whether
    the plain ANSI UI is worth suggesting."""

    def __init__(self, message: str, other_ui_may_work: bool = False) -> None:
        super().__init__(message)
        self.other_ui_may_work = other_ui_may_work


def check_terminal_streams() -> None:
    """Both UIs need a terminal on standard input and output, and one that
    can move its cursor."""
    import sys
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise TerminalUnsuitable("standard input and output must be a terminal")
    term = os.environ.get("TERM", "")
    if term in ("", "dumb"):
        raise TerminalUnsuitable(f"the terminal type TERM={term!r} cannot move the cursor; "
                                 "set TERM to your terminal's type (e.g. xterm-256color)")


# --------------------------------------------------------------------------
# Text


_BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                           "\u2066\u2067\u2068\u2069")


def escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x20:
        return "^" + chr(code + 0x40)
    if code == 0x7F:
        return "^?"
    if 0x80 <= code < 0xA0 or char in _BIDI_CONTROLS or code in (0x2028, 0x2029):
        return f"<U+{code:04X}>"
    return char


def escape_controls(text: str) -> str:
    """Show control characters (C0, DEL, C1, bidi overrides) as visible text,
    so nothing from the network can drive the terminal."""
    if text.isprintable():
        return text
    return "".join(escape_char(char) if not char.isprintable() else char for char in text)


def graphemes(text: str) -> list[str]:
    """The user-perceived characters of text (Unicode grapheme clusters:
    an emoji with its modifier, a flag, a ZWJ family, e + a combining
    accent, a Hangul syllable written as jamo)."""
    return list(wcwidth.iter_graphemes(text)) if text else []


def cluster_width(cluster: str) -> int:
    """Columns a grapheme cluster takes on a terminal that follows Unicode."""
    return max(0, wcwidth.width(cluster, control_codes="ignore"))


def display_width(text: str) -> int:
    return sum(map(cluster_width, graphemes(text)))


def boundaries(text: str) -> list[int]:
    """The offsets where grapheme clusters start, and len(text)."""
    offsets = [0]
    for cluster in graphemes(text):
        offsets.append(offsets[-1] + len(cluster))
    return offsets


def nick_color(nick: str) -> int:
    """A stable colour for a nick, never the information or error colour."""
    return NICK_COLORS[zlib.crc32(nick.casefold().encode("utf-8")) % len(NICK_COLORS)]


def as_segments(message: Message) -> list[Segment]:
    if isinstance(message, str):
        return [(escape_controls(message), None)]
    return [(escape_controls(text), style) for text, style in message]


def wrap_segments(segments: Sequence[Segment], width: int) -> list[Row]:
    """Wrap styled text into rows of at most ``width`` display columns,
    breaking after a space when one is in the row."""
    width = max(1, width)
    cells = [(cluster, style, cluster_width(cluster))
             for text, style in segments for cluster in graphemes(text)]
    rows: list[Row] = []
    start = 0
    while True:
        used, end, last_space = 0, start, -1
        while end < len(cells) and used + cells[end][2] <= width:
            if cells[end][0] == " ":
                last_space = end
            used += cells[end][2]
            end += 1
        next_start = end
        if end < len(cells) and cells[end][0] == " ":
            next_start = end + 1  # the break falls on a space: drop it
        elif end < len(cells) and last_space > start:
            end = next_start = last_space + 1
        if end == start and end < len(cells):
            end = next_start = end + 1  # a character wider than the row
        rows.append(_merge(cells[start:end]))
        start = next_start
        if start >= len(cells):
            return rows


def _merge(cells: list[tuple[str, str | None, int]]) -> Row:
    row: Row = []
    for char, style, _ in cells:
        if row and row[-1][1] == style:
            row[-1] = (row[-1][0] + char, style)
        else:
            row.append((char, style))
    return row


def row_text(row: Row) -> str:
    return "".join(text for text, _ in row)


# --------------------------------------------------------------------------
# Scrollback


class Scrollback:
    """The output lines kept for redraws and PageUp/PageDown.

    ``offset`` is how many wrapped rows the view is scrolled up from the
    newest row; 0 means following new output.  Each line keeps its wrapped
    rows for the last width it was drawn at, so a redraw re-wraps nothing.
    At most ``limit`` lines and ``byte_limit`` bytes of text are kept; the
    oldest go first.  While the view is scrolled up, ``new_below`` counts
    the lines that came since and wait below it; ``showing_top`` says the
    view reaches the oldest line kept.
    """

    def __init__(self, limit: int = SCROLLBACK_LINES, byte_limit: int = SCROLLBACK_BYTES) -> None:
        # each entry: [segments, width wrapped at, rows at that width, size in bytes,
        #              its number in order of arrival (-1: history put above)]
        self.lines: collections.deque[list] = collections.deque()
        self.limit = limit
        self.byte_limit = byte_limit
        self.size = 0
        self.offset = 0
        self.added = 0              # lines added at the bottom, ever
        self.scrolled_at: int | None = None  # self.added when the view left the bottom
        self.new_below = 0
        self.showing_top = True

    def add(self, segments: list[Segment], width: int) -> None:
        entry = self._entry(segments, self.added)
        self.added += 1
        self.lines.append(entry)
        self._trim()
        if self.offset:
            self.offset += len(self._rows(entry, width))

    def add_above(self, lines: Sequence[list[Segment]], width: int) -> None:
        """Older lines (history asked for), above everything kept, as many
        as there is room for (the newest of them first).  A view scrolled
        up to the top moves up onto them: the PageUp that asked goes on."""
        follow = self.offset > 0 and self.showing_top
        for segments in reversed(lines):
            if len(self.lines) >= self.limit or self.size >= self.byte_limit:
                break
            entry = self._entry(segments, -1)
            self.lines.appendleft(entry)
            if follow:
                self.offset += len(self._rows(entry, width))

    def _entry(self, segments: list[Segment], number: int) -> list:
        size = sum(len(text.encode("utf-8", "replace")) for text, _ in segments)
        self.size += size
        return [segments, 0, [], size, number]

    def _trim(self) -> None:
        while len(self.lines) > self.limit or (self.size > self.byte_limit
                                               and len(self.lines) > 1):
            self.size -= self.lines.popleft()[3]

    @staticmethod
    def _rows(entry: list, width: int) -> list[Row]:
        if entry[1] != width:
            entry[1], entry[2] = width, wrap_segments(entry[0], width)
        return entry[2]

    def view(self, width: int, height: int) -> list[Row]:
        """The rows to show, top to bottom (at most ``height``)."""
        wanted = height + self.offset
        chunks: list[list[Row]] = []
        count = 0
        for entry in reversed(self.lines):
            rows = self._rows(entry, width)
            chunks.append(rows)
            count += len(rows)
            if count >= wanted:
                break
        rows = [row for chunk in reversed(chunks) for row in chunk]
        self.offset = max(0, min(self.offset, len(rows) - height))
        self.showing_top = len(chunks) == len(self.lines) and self.offset >= len(rows) - height
        self._count_new_below(width)
        end = len(rows) - self.offset
        return rows[max(0, end - height):end]

    def _count_new_below(self, width: int) -> None:
        """How many of the lines below the view came after it left the bottom."""
        if not self.offset:
            self.scrolled_at, self.new_below = None, 0
            return
        if self.scrolled_at is None:
            self.scrolled_at = self.added
        below, count = self.offset, 0
        for entry in reversed(self.lines):
            rows = len(self._rows(entry, width))
            if rows > below:
                break
            below -= rows
            count += entry[4] >= self.scrolled_at
        self.new_below = count

    def page_up(self, height: int) -> None:
        if not self.offset:
            self.scrolled_at = self.added
        self.offset += max(1, height - 1)

    def page_down(self, height: int) -> None:
        self.offset = max(0, self.offset - max(1, height - 1))

    def to_bottom(self) -> None:
        self.offset = 0


def scroll_status(new_below: int, width: int) -> str:
    """What the input row says while the output is scrolled up (as irssi's
    ``-- more --`` and WeeChat's ``-MORE(N)-``)."""
    if width >= 60:
        lines = "line" if new_below == 1 else "lines"
        return (f"-- {new_below} new {lines} below (End) --" if new_below
                else "-- scrolled up (End) --")
    return f"-MORE({new_below})-" if new_below else "-MORE-"


# --------------------------------------------------------------------------
# Line editing

# Key names shared by the backends' key readers; anything else is text.
ENTER, TAB, BACKSPACE, DELETE = "enter", "tab", "backspace", "delete"
LEFT, RIGHT, HOME, END = "left", "right", "home", "end"
UP, DOWN, PAGE_UP, PAGE_DOWN = "up", "down", "page-up", "page-down"
WORD_LEFT, WORD_RIGHT = "word-left", "word-right"
CTRL_A, CTRL_C, CTRL_D, CTRL_E = "ctrl-a", "ctrl-c", "ctrl-d", "ctrl-e"
CTRL_K, CTRL_L, CTRL_U, CTRL_W = "ctrl-k", "ctrl-l", "ctrl-u", "ctrl-w"
CTRL_Z = "ctrl-z"
ESCAPE = "escape"

CONTROL_KEYS = {
    0x01: CTRL_A, 0x02: LEFT, 0x03: CTRL_C, 0x04: CTRL_D, 0x05: CTRL_E,
    0x06: RIGHT, 0x08: BACKSPACE, 0x09: TAB, 0x0A: ENTER, 0x0B: CTRL_K,
    0x0C: CTRL_L, 0x0D: ENTER, 0x0E: DOWN, 0x10: UP, 0x15: CTRL_U,
    0x17: CTRL_W, 0x1A: CTRL_Z, 0x1B: ESCAPE, 0x7F: BACKSPACE,
}


class Paste(str):
    """Text that arrived as a bracketed paste: inserted, never executed."""


class SecretPrompt(str):
    """A prompt for a secret (a password): what is typed is shown as one
    ``*`` per character and kept out of the history."""


# (the word before the cursor, whether it starts the line, the text before it)
Completer = Callable[[str, bool, str], list[str]]


class LineEditor:
    """The input line: text, cursor, history and Tab completion."""

    def __init__(self) -> None:
        self.text = ""
        self.cursor = 0
        self.history: list[str] = []
        self._history_pos = 0
        self._draft = ""
        self._completion: tuple[int, list[str], int] | None = None

    # editing
    def insert(self, text: str) -> None:
        text = "".join(c for c in text.replace("\r\n", "\n").replace("\r", "\n")
                       .replace("\t", "    ")  # keep joiners and selectors, not controls
                       if c == "\n" or unicodedata.category(c) != "Cc")
        self.text = self.text[:self.cursor] + text + self.text[self.cursor:]
        self.cursor += len(text)

    def _previous(self) -> int:
        """Where the grapheme cluster before the cursor starts."""
        return max((b for b in boundaries(self.text) if b < self.cursor), default=0)

    def _next(self) -> int:
        """Where the grapheme cluster after the cursor ends."""
        return min((b for b in boundaries(self.text) if b > self.cursor),
                   default=len(self.text))

    def backspace(self) -> None:
        start = self._previous()
        self.text = self.text[:start] + self.text[self.cursor:]
        self.cursor = start

    def delete(self) -> None:
        self.text = self.text[:self.cursor] + self.text[self._next():]

    def left(self) -> None:
        self.cursor = self._previous()

    def right(self) -> None:
        self.cursor = self._next()

    def move(self, position: int) -> None:
        self.cursor = max(0, min(len(self.text), position))

    def word_start(self) -> int:
        position = self.cursor
        while position and self.text[position - 1] == " ":
            position -= 1
        while position and self.text[position - 1] != " ":
            position -= 1
        return position

    def word_end(self) -> int:
        position = self.cursor
        while position < len(self.text) and self.text[position] == " ":
            position += 1
        while position < len(self.text) and self.text[position] != " ":
            position += 1
        return position

    def delete_word_back(self) -> None:
        start = self.word_start()
        self.text = self.text[:start] + self.text[self.cursor:]
        self.cursor = start

    def kill_to_start(self) -> None:
        self.text = self.text[self.cursor:]
        self.cursor = 0

    def kill_to_end(self) -> None:
        self.text = self.text[:self.cursor]

    def replace(self, text: str) -> None:
        self.text, self.cursor = text, len(text)

    # history
    def history_back(self) -> None:
        if self._history_pos == 0:
            return
        if self._history_pos == len(self.history):
            self._draft = self.text
        self._history_pos -= 1
        self.replace(self.history[self._history_pos])

    def history_forward(self) -> None:
        if self._history_pos >= len(self.history):
            return
        self._history_pos += 1
        if self._history_pos == len(self.history):
            self.replace(self._draft)
        else:
            self.replace(self.history[self._history_pos])

    def accept(self, remember: bool = True) -> str:
        line = self.text
        if remember and line.strip() and (not self.history or self.history[-1] != line):
            self.history.append(line)
        self._history_pos = len(self.history)
        self._draft = ""
        self.replace("")
        return line

    # completion
    def complete(self, completer: Completer | None) -> None:
        """Complete the word before the cursor; Tab again cycles the matches."""
        if completer is None:
            return
        if self._completion is not None:
            start, matches, index = self._completion
            self._apply(start, matches, (index + 1) % len(matches))
            return
        start = self.cursor
        while start and self.text[start - 1] != " ":
            start -= 1
        word = self.text[start:self.cursor]
        matches = completer(word, start == 0, self.text[:start])
        if not matches:
            return
        common = len(os.path.commonprefix([m.casefold() for m in matches]))
        if len(matches) > 1 and common > len(word):
            self.text = self.text[:start] + matches[0][:common] + self.text[self.cursor:]
            self.cursor = start + common
            return
        self._apply(start, matches, 0)

    def _apply(self, start: int, matches: list[str], index: int) -> None:
        match = matches[index]
        suffix = " " if match.startswith("/") or start else ": "
        self.text = self.text[:start] + match + suffix + self.text[self.cursor:]
        self.cursor = start + len(match) + len(suffix)
        self._completion = (start, matches, index) if len(matches) > 1 else None

    def forget_completion(self) -> None:
        self._completion = None


def input_view(prompt: str, text: str, cursor: int, width: int) -> tuple[str, str, int]:
    """What the input row shows: (prompt, visible text, cursor column).

    The text scrolls sideways to keep the cursor in view; one column is kept
    free at the right for the cursor.  Works on grapheme clusters, so the
    cursor never lands inside one."""
    prompt = escape_controls(prompt)
    clusters = graphemes(text)
    shown = ["\u21b5" if c == "\n" else escape_controls(c) for c in clusters]
    widths = [display_width(c) for c in shown]
    at = len(graphemes(text[:cursor]))  # the cluster the cursor is before
    available = width - 1 - display_width(prompt)
    if available < 8:  # a tiny terminal: give the text the whole row
        prompt, available = "", width - 1
    start, used = at, 0
    while start > 0 and used + widths[start - 1] <= max(1, available - 4):
        start -= 1
        used += widths[start]
    if sum(widths[:at]) <= available:
        start = 0
    end, total = start, 0
    while end < len(shown) and total + widths[end] <= available:
        total += widths[end]
        end += 1
    column = display_width(prompt) + sum(widths[start:at])
    return prompt, "".join(shown[start:end]), column


# --------------------------------------------------------------------------
# The input loop


class Terminal(Protocol):
    """What ChatScreen needs of a terminal; each backend gives it one.

    ``color`` is set before ``setup`` (a terminal without colours may turn
    it off there).  ``read_keys(final)`` returns the keys available now
    (``final``: the wait for the rest of an escape sequence is over);
    ``waiting_for_more`` says a partial escape sequence is buffered.
    ``draw`` gets the output rows (None: unchanged), the input row's
    prompt, visible text and cursor column, whether to repaint it all, and
    a status to show at the right of the input row ("": none).
    """

    input_fd: int
    color: bool

    def setup(self) -> None: ...
    def restore(self) -> None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def size(self) -> tuple[int, int]: ...
    def resized(self) -> None: ...
    def read_keys(self, final: bool) -> Iterable[str]: ...
    def waiting_for_more(self) -> bool: ...
    def draw(self, rows: list[Row] | None, prompt: str, text: str, column: int,
             full: bool, status: str = "") -> None: ...
    def beep(self) -> None: ...


class ChatScreen:
    """Output region above, input row below, on the terminal it is given."""

    def __init__(self, terminal: Terminal, color: bool = True) -> None:
        self.terminal = terminal
        terminal.color = color
        self.scrollback = Scrollback()
        self.editor = LineEditor()
        # lines from other threads, not drawn yet: no more than the scrollback keeps
        self._pending: collections.deque[Message] = collections.deque(maxlen=SCROLLBACK_LINES)
        self._older: list[Sequence[Message]] = []  # history to put above, not drawn yet
        self._typed_ahead: list[str] = []  # keys read after an Enter, for the next line
        self._paged_up = False  # the last key was PageUp: did it reach the top?
        self._at_top: Callable[[], None] | None = None
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        self._wake_sent = False
        self._stop_input = False
        self._resized = False
        self._started = False
        self._full_redraw = True
        self._previous_winch = None
        self._output_changed = True
        self._bells = 0

    # ---- public API (module-level functions of the backends) ----

    def start(self) -> None:
        if self._started:
            return
        try:
            self.terminal.setup()
        except BaseException:
            with contextlib.suppress(Exception):  # undo what part of it did
                self.terminal.restore()
            raise
        self._started = True
        self._full_redraw = True
        try:
            self._previous_winch = signal.signal(signal.SIGWINCH, self._on_winch)
        except ValueError:  # not the main thread
            self._previous_winch = None

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._previous_winch is not None:
            signal.signal(signal.SIGWINCH, self._previous_winch)
        self.terminal.restore()

    def print_message(self, message: Message) -> None:
        """Queue a line for the output region; safe from any thread."""
        with self._lock:
            self._pending.append(message)
            self._wake()

    def print_older(self, messages: Sequence[Message]) -> None:
        """Queue older lines to go above everything shown; safe from any thread."""
        with self._lock:
            self._older.append(list(messages))
            self._wake()

    def bell(self) -> None:
        """Ring the terminal bell (from any thread)."""
        with self._lock:
            self._bells += 1
            self._wake()

    def stop_input(self) -> None:
        """Make the current (or next) read_command raise EOFError."""
        with self._lock:
            self._stop_input = True
            self._wake()

    def read_command(self, prompt: str | Callable[[], str],
                     complete: Completer | None = None,
                     at_top: Callable[[], None] | None = None) -> str:
        """Edit a line at the bottom row and return it when Enter is pressed.

        ``prompt`` may be a callable, asked again at each redraw; ``at_top``
        is called when PageUp reaches the oldest line kept.  Raises EOFError
        on Ctrl-D at an empty line (or after stop_input) and
        KeyboardInterrupt on Ctrl-C."""
        get_prompt = prompt if callable(prompt) else (lambda: prompt)
        self._at_top = at_top
        final = False
        while True:
            self._absorb_pending()
            if self._resized:
                self._resized = False
                self._full_redraw = True
                self.terminal.resized()
            self._render(get_prompt())
            if self._stop_input:
                raise EOFError("input stopped")
            keys, self._typed_ahead = self._typed_ahead or list(self.terminal.read_keys(final)), []
            for index, key in enumerate(keys):
                secret = isinstance(get_prompt(), SecretPrompt)
                line = self._handle_key(key, None if secret else complete, remember=not secret)
                if line is not None:
                    self._typed_ahead = keys[index + 1:]  # for the next line, not lost
                    self._render(get_prompt())
                    return line
            final = False if keys else self._wait_for_input()

    # ---- internals ----

    def _wake(self) -> None:
        if not self._wake_sent:
            self._wake_sent = True
            try:
                os.write(self._wake_write, b"!")
            except OSError:
                pass

    def _on_winch(self, *_: object) -> None:
        self._resized = True
        try:
            os.write(self._wake_write, b"w")
        except OSError:
            pass

    def _wait_for_input(self) -> bool:
        """Block until a key, a message or a resize; True when the wait for
        the rest of an escape sequence ran out."""
        timeout = ESCAPE_WAIT if self.terminal.waiting_for_more() else None
        try:
            ready, _, _ = select.select([self.terminal.input_fd, self._wake_read], [], [],
                                        timeout)
        except InterruptedError:
            return False
        if self._wake_read in ready:
            with self._lock:
                self._wake_sent = False
                try:
                    while os.read(self._wake_read, 4096):
                        pass
                except BlockingIOError:
                    pass
        return not ready

    def _absorb_pending(self) -> None:
        with self._lock:
            messages = list(self._pending)
            self._pending.clear()
            older, self._older = self._older, []
            bells, self._bells = self._bells, 0
        if bells:
            self.terminal.beep()
        width = self.terminal.size()[1]
        for batch in older:
            self.scrollback.add_above([as_segments(message) for message in batch], width)
            self._output_changed = True
        if not messages:
            return
        for message in messages:
            self.scrollback.add(as_segments(message), width)
        self._output_changed = True

    def _render(self, prompt: str) -> None:
        height, width = self.terminal.size()
        rows = None
        if self._output_changed or self._full_redraw:
            rows = self.scrollback.view(width, max(1, height - 1))
        text, cursor = self.editor.text, self.editor.cursor
        if isinstance(prompt, SecretPrompt):  # one * per character typed
            text, cursor = "*" * len(graphemes(text)), len(graphemes(text[:cursor]))
        status = scroll_status(self.scrollback.new_below, width) \
            if self.scrollback.offset else ""
        room = width - len(status) - 1 if status and width - len(status) > 20 else width
        shown_prompt, text, column = input_view(prompt, text, cursor, room)
        self.terminal.draw(rows, shown_prompt, text, column, self._full_redraw,
                           status if room < width else "")
        self._output_changed = False
        self._full_redraw = False
        if self._paged_up:
            self._paged_up = False
            if self.scrollback.showing_top and self._at_top is not None:
                self._at_top()

    def _handle_key(self, key: str, complete: Completer | None,
                    remember: bool = True) -> str | None:
        editor = self.editor
        if key != TAB:
            editor.forget_completion()
        if isinstance(key, Paste):
            editor.insert(key)
            return None
        action = {
            LEFT: editor.left, RIGHT: editor.right,
            HOME: lambda: editor.move(0), CTRL_A: lambda: editor.move(0),
            END: self._end,
            CTRL_E: lambda: editor.move(len(editor.text)),
            WORD_LEFT: lambda: editor.move(editor.word_start()),
            WORD_RIGHT: lambda: editor.move(editor.word_end()),
            BACKSPACE: editor.backspace, DELETE: editor.delete,
            CTRL_U: editor.kill_to_start, CTRL_K: editor.kill_to_end,
            CTRL_W: editor.delete_word_back,
            UP: editor.history_back if remember else None,
            DOWN: editor.history_forward if remember else None,
            TAB: lambda: editor.complete(complete),
            PAGE_UP: self._page_up, PAGE_DOWN: self._page_down,
            CTRL_L: self._redraw, CTRL_Z: self._suspend,
        }.get(key)
        if action is not None:
            action()
        elif key == ENTER:
            self.scrollback.offset = 0
            self._output_changed = True
            return editor.accept(remember)
        elif key == CTRL_C:
            raise KeyboardInterrupt
        elif key == CTRL_D:
            if not editor.text:
                raise EOFError("end of input")
            editor.delete()
        elif len(key) == 1 and unicodedata.category(key) != "Cc":
            editor.insert(key)
        return None

    def _end(self) -> None:
        """End: to the end of the line, and back to the newest output."""
        self.editor.move(len(self.editor.text))
        if self.scrollback.offset:
            self.scrollback.to_bottom()
            self._output_changed = True

    def _page_up(self) -> None:
        self.scrollback.page_up(self.terminal.size()[0] - 1)
        self._output_changed = True
        self._paged_up = True

    def _page_down(self) -> None:
        self.scrollback.page_down(self.terminal.size()[0] - 1)
        self._output_changed = True

    def _redraw(self) -> None:
        self._full_redraw = True

    def _suspend(self) -> None:
        """Ctrl-Z: give the terminal back, stop as the shell expects, and
        take the terminal again when continued (fg)."""
        self.terminal.pause()
        os.kill(os.getpid(), signal.SIGTSTP)  # returns once SIGCONT arrives
        self.terminal.resume()
        self._resized = True  # the size may have changed meanwhile


def style_key_color(style: str | None) -> int | None:
    """Colour number (0-15) for a style key (None: the terminal's default)."""
    if style == "error":
        return ERROR_COLOR
    if style == "info":
        return INFO_COLOR
    if style is not None and style.startswith("nick:"):
        return nick_color(style[5:])
    return None


def module_functions(terminal_factory: Callable[[], Terminal]):
    """The four functions every backend exposes (plus stop_input, bell and
    print_older),
    bound to one lazily created screen on the backend's terminal."""
    holder: dict[str, ChatScreen] = {}

    def screen() -> ChatScreen:
        if "screen" not in holder:
            holder["screen"] = ChatScreen(terminal_factory())
        return holder["screen"]

    def init_windows(color: bool = True) -> None:
        screen().terminal.color = color
        screen().start()

    def read_command(prompt, complete=None, at_top=None) -> str:
        return screen().read_command(prompt, complete, at_top)

    def print_message(message: Message) -> None:
        screen().print_message(message)

    def print_older(messages: Sequence[Message]) -> None:
        screen().print_older(messages)

    def end_windows() -> None:
        if "screen" in holder:
            holder["screen"].stop()

    def stop_input() -> None:
        screen().stop_input()

    def bell() -> None:
        screen().bell()

    return init_windows, read_command, print_message, end_windows, stop_input, bell, \
        print_older

