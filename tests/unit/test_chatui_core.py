"""The terminal-free pieces: editor, completion, wrapping, escaping, keys."""

import collections
import os
import threading

import pytest

from termchat.ui import screen as core
from chatui import KeyDecoder


def editor_with(text, cursor=None):
    editor = core.LineEditor()
    editor.insert(text)
    if cursor is not None:
        editor.move(cursor)
    return editor


def test_editing_operations():
    editor = editor_with("hello world")
    editor.delete_word_back()
    assert editor.text == "hello "
    editor.move(2)
    editor.kill_to_end()
    assert (editor.text, editor.cursor) == ("he", 2)
    editor.insert("y there")
    editor.move(2)
    editor.kill_to_start()
    assert (editor.text, editor.cursor) == ("y there", 0)
    editor.delete()
    assert editor.text == " there"


def test_history_keeps_the_draft():
    editor = core.LineEditor()
    for line in ("one", "two"):
        editor.insert(line)
        editor.accept()
    editor.insert("draft")
    editor.history_back()
    assert editor.text == "two"
    editor.history_back()
    editor.history_back()
    assert editor.text == "one"
    editor.history_forward()
    editor.history_forward()
    assert editor.text == "draft"


def test_completion_cycles_and_uses_the_right_suffix():
    nicks = ["chris", "christine", "pat"]

    def complete(word, at_start, before=""):
        return [n for n in nicks if n.startswith(word)]

    editor = editor_with("chr")
    editor.complete(complete)
    assert editor.text == "chris"          # common prefix first
    editor.complete(complete)
    assert editor.text == "chris: "
    editor.complete(complete)
    assert editor.text == "christine: "
    editor = editor_with("hi p")
    editor.complete(complete)
    assert editor.text == "hi pat "


def test_paste_keeps_newlines_and_drops_control_characters():
    editor = core.LineEditor()
    editor.insert("a\r\nb\x1b[31m\tc")
    assert editor.text == "a\nb[31m    c"


@pytest.mark.parametrize("raw, shown", [
    ("\x1b[2J", "^[[2J"), ("bell\x07", "bell^G"), ("del\x7f", "del^?"),
    ("c1\x9b", "c1<U+009B>"), ("rtl\u202eevil", "rtl<U+202E>evil"), ("plain é 中", "plain é 中"),
])
def test_escape_controls(raw, shown):
    assert core.escape_controls(raw) == shown


def test_wrap_breaks_at_spaces_and_counts_wide_characters():
    rows = core.wrap_segments([("chris", "nick:chris"), (": aaa bbb ccc", None)], 10)
    assert [core.row_text(r) for r in rows] == ["chris: aaa", "bbb ccc"]
    rows = core.wrap_segments([("中文中文中文", None)], 5)
    assert [core.row_text(r) for r in rows] == ["中文", "中文", "中文"]


def test_scrollback_view_and_paging():
    scrollback = core.Scrollback()
    for i in range(50):
        scrollback.add([(f"line {i}", None)], 80)
    assert core.row_text(scrollback.view(80, 10)[-1]) == "line 49"
    scrollback.page_up(10)
    assert core.row_text(scrollback.view(80, 10)[-1]) == "line 40"
    scrollback.add([("line 50", None)], 80)  # the view stays put while scrolled
    assert core.row_text(scrollback.view(80, 10)[-1]) == "line 40"
    for _ in range(10):
        scrollback.page_up(10)
    assert core.row_text(scrollback.view(80, 10)[0]) == "line 0"


def filled(count, width=80):
    scrollback = core.Scrollback()
    for i in range(count):
        scrollback.add([(f"line {i}", None)], width)
    return scrollback


def test_while_scrolled_up_the_new_lines_below_are_counted():
    scrollback = filled(50)
    scrollback.view(80, 10)
    assert (scrollback.offset, scrollback.new_below) == (0, 0)
    scrollback.page_up(10)
    scrollback.view(80, 10)
    assert scrollback.new_below == 0  # scrolled, but nothing new yet
    for i in range(3):
        scrollback.add([(f"new {i}", None)], 80)
    scrollback.view(80, 10)
    assert scrollback.new_below == 3
    scrollback.add([("a long one " * 20, None)], 80)  # three rows: still one line
    scrollback.view(80, 10)
    assert scrollback.new_below == 4
    assert scrollback.offset == 9 + 6
    scrollback.page_down(12)  # 11 rows down: "new 1" at the bottom of the view
    rows = [core.row_text(row) for row in scrollback.view(80, 10)]
    assert rows[-2:] == ["new 0", "new 1"] and scrollback.new_below == 2
    scrollback.page_down(10)
    scrollback.view(80, 10)
    assert (scrollback.offset, scrollback.new_below) == (0, 0)


def test_scroll_status_says_how_many_wait_below():
    assert core.scroll_status(0, 80) == "-- scrolled up (End) --"
    assert core.scroll_status(1, 80) == "-- 1 new line below (End) --"
    assert core.scroll_status(12, 80) == "-- 12 new lines below (End) --"
    assert core.scroll_status(12, 40) == "-MORE(12)-"
    assert core.scroll_status(0, 40) == "-MORE-"


def test_showing_top_is_true_only_when_the_oldest_line_is_in_view():
    scrollback = filled(50)
    scrollback.view(80, 10)
    assert not scrollback.showing_top
    for _ in range(5):
        scrollback.page_up(10)
    assert core.row_text(scrollback.view(80, 10)[0]) == "line 0" and scrollback.showing_top
    short = filled(3)
    short.view(80, 10)
    assert short.showing_top


def test_lines_added_above_go_before_the_oldest_and_do_not_count_as_new():
    scrollback = filled(5)
    scrollback.add_above([[("old 0", None)], [("old 1", None)]], 80)
    rows = [core.row_text(row) for row in scrollback.view(80, 100)]
    assert rows == ["old 0", "old 1", "line 0", "line 1", "line 2", "line 3", "line 4"]
    assert scrollback.new_below == 0


def test_a_view_at_the_top_moves_up_onto_lines_added_above():
    scrollback = filled(10)
    for _ in range(3):
        scrollback.page_up(4)
    assert [core.row_text(row) for row in scrollback.view(80, 4)][0] == "line 0"
    scrollback.add_above([[("old 0", None)], [("old 1", None)]], 80)
    assert [core.row_text(row) for row in scrollback.view(80, 4)] == [
        "old 0", "old 1", "line 0", "line 1"]
    below = filled(10)
    below.page_up(4)  # not at the top: the view stays where it is
    before = [core.row_text(row) for row in below.view(80, 4)]
    below.add_above([[("old", None)]], 80)
    assert [core.row_text(row) for row in below.view(80, 4)] == before


def test_lines_added_above_never_push_out_newer_ones():
    scrollback = core.Scrollback(limit=4)
    for i in range(3):
        scrollback.add([(f"line {i}", None)], 80)
    scrollback.add_above([[(f"old {i}", None)] for i in range(5)], 80)
    rows = [core.row_text(row) for row in scrollback.view(80, 100)]
    assert rows == ["old 4", "line 0", "line 1", "line 2"]  # the newest of the old


def test_input_view_scrolls_to_keep_the_cursor_visible():
    prompt, text, column = core.input_view("pat> ", "x" * 200, 200, 40)
    assert prompt == "pat> " and column <= 39 and text.endswith("x")
    prompt, text, column = core.input_view("pat> ", "中文", 1, 40)
    assert (text, column) == ("中文", 7)


def test_key_decoder_handles_split_sequences_and_lone_escape():
    decoder = KeyDecoder()
    assert decoder.feed(b"a\x1b") == ["a"]
    assert decoder.incomplete
    assert decoder.feed(b"[") == []
    assert decoder.feed(b"D") == [core.LEFT]
    assert decoder.feed(b"\x1bOH\x1b[5~\x1b[3~\x1b[1;5C") == [
        core.HOME, core.PAGE_UP, core.DELETE, core.WORD_RIGHT]
    assert decoder.feed(b"\x1b") == []
    assert decoder.flush() == [core.ESCAPE]
    assert decoder.feed("é中🎉".encode()[:3]) == ["é"]


def test_key_decoder_bracketed_paste_split_anywhere():
    data = b"\x1b[200~line one\rline two\x1b[201~x"
    for cut in range(1, len(data)):
        decoder = KeyDecoder()
        keys = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert keys == ["line one\rline two", "x"]
        assert isinstance(keys[0], core.Paste)


# ---- ChatScreen driven through a fake terminal ----

class FakeTerminal:
    """A core.Terminal with no terminal: keys are queued by the test, and
    each draw is recorded as text."""

    def __init__(self, rows=6, cols=40, fail_setup=False):
        self.color = True
        self.input_fd, self._poke = os.pipe()
        os.set_blocking(self.input_fd, False)
        self._keys = collections.deque()
        self.rows, self.cols = rows, cols
        self.output: list[str] = []
        self.input_row = ""
        self.status = ""
        self.column = 0
        self.fail_setup = fail_setup
        self.calls: list[str] = []
        self.drawn = threading.Condition()

    def press(self, *keys):
        self._keys.extend(keys)
        os.write(self._poke, b"k")

    def type(self, text):
        self.press(*text)

    def setup(self):
        self.calls.append("setup")
        if self.fail_setup:
            raise RuntimeError("no terminal here")

    def restore(self):
        self.calls.append("restore")

    pause, resume = restore, setup

    def size(self):
        return self.rows, self.cols

    def resized(self):
        pass

    def read_keys(self, final):
        try:
            os.read(self.input_fd, 1024)
        except BlockingIOError:
            pass
        keys = list(self._keys)
        self._keys.clear()
        return keys

    def waiting_for_more(self):
        return False

    def beep(self):
        self.calls.append("beep")

    def draw(self, rows, prompt, text, column, full, status=""):
        with self.drawn:
            if rows is not None:
                self.output = [core.row_text(row) for row in rows]
            self.input_row, self.column = prompt + text, column
            self.status = status
            self.drawn.notify_all()

    def wait_until(self, condition, timeout=5):
        with self.drawn:
            assert self.drawn.wait_for(lambda: condition(self), timeout), (
                self.output, self.input_row)


def screen_on(terminal):
    return core.ChatScreen(terminal)


def test_read_command_returns_the_edited_line():
    term = FakeTerminal()
    screen = screen_on(term)
    term.type("hello wrld")
    term.press(core.LEFT, core.LEFT, core.LEFT, "o", core.END, "!", core.CTRL_A, ">", " ",
               core.ENTER)
    assert screen.read_command("pat> ") == "> hello world!"
    assert term.input_row == "pat> " and term.column == len("pat> ")


def test_lines_typed_ahead_in_one_read_are_each_returned():
    term = FakeTerminal()
    screen = screen_on(term)
    term.press("/", "n", core.ENTER, "/", "d", core.ENTER, "x")
    assert screen.read_command("> ") == "/n"
    assert screen.read_command("> ") == "/d"
    term.press(core.ENTER)
    assert screen.read_command("> ") == "x"


def test_a_message_from_another_thread_leaves_the_half_typed_line_alone():
    term = FakeTerminal()
    screen = screen_on(term)
    term.type("half")

    def other_thread():
        term.wait_until(lambda t: t.input_row == "pat> half")
        screen.print_message([("chris", "nick:chris"), (": interrupting", None)])
        term.wait_until(lambda t: "chris: interrupting" in t.output)
        assert term.input_row == "pat> half" and term.column == len("pat> half")
        term.type(" done")
        term.press(core.ENTER)

    helper = threading.Thread(target=other_thread)
    helper.start()
    assert screen.read_command("pat> ") == "half done"
    helper.join(5)
    assert term.output[-1] == "chris: interrupting"


@pytest.mark.parametrize("key, error", [(core.CTRL_D, EOFError), (core.CTRL_C, KeyboardInterrupt)])
def test_ctrl_d_on_an_empty_line_and_ctrl_c_end_input(key, error):
    term = FakeTerminal()
    term.press(key)
    with pytest.raises(error):
        screen_on(term).read_command("> ")


def test_ctrl_d_with_text_deletes_under_the_cursor():
    term = FakeTerminal()
    term.type("abc")
    term.press(core.HOME, core.CTRL_D, core.ENTER)
    assert screen_on(term).read_command("> ") == "bc"


def test_stop_input_ends_a_waiting_read_command():
    term = FakeTerminal()
    screen = screen_on(term)
    threading.Timer(0.05, screen.stop_input).start()
    with pytest.raises(EOFError):
        screen.read_command("> ")


def test_a_paste_is_inserted_whole_and_sent_only_on_enter():
    term = FakeTerminal()
    term.press(core.Paste("one\ntwo"), core.ENTER)
    assert screen_on(term).read_command("> ") == "one\ntwo"


def test_history_and_completion_through_keys():
    term = FakeTerminal()
    screen = screen_on(term)
    term.type("first")
    term.press(core.ENTER)
    assert screen.read_command("> ") == "first"
    term.type("ch")
    term.press(core.TAB, core.UP, core.DOWN, core.ENTER)
    assert screen.read_command("> ", lambda word, start, before: ["chris"]) == "chris: "


def test_page_up_shows_older_lines_and_enter_follows_new_output_again():
    term = FakeTerminal(rows=4)
    screen = screen_on(term)
    for i in range(10):
        screen.print_message(f"line {i}")

    def other_thread():
        term.wait_until(lambda t: t.output == ["line 7", "line 8", "line 9"])
        term.press(core.PAGE_UP)
        term.wait_until(lambda t: t.output == ["line 5", "line 6", "line 7"])
        term.press(core.ENTER)

    helper = threading.Thread(target=other_thread)
    helper.start()
    screen.read_command("> ")
    helper.join(5)
    assert term.output == ["line 7", "line 8", "line 9"]


def test_the_input_row_says_new_lines_wait_and_end_goes_back_to_them():
    term = FakeTerminal(rows=4, cols=80)
    screen = screen_on(term)
    for i in range(10):
        screen.print_message(f"line {i}")

    def other_thread():
        term.wait_until(lambda t: t.output == ["line 7", "line 8", "line 9"])
        assert term.status == ""
        term.type("half")
        term.press(core.PAGE_UP)
        term.wait_until(lambda t: t.status == "-- scrolled up (End) --")
        screen.print_message("line 10")
        screen.print_message("line 11")
        term.wait_until(lambda t: t.status == "-- 2 new lines below (End) --")
        assert term.output == ["line 5", "line 6", "line 7"] and term.input_row == "> half"
        term.press(core.HOME, core.END)
        term.wait_until(lambda t: t.output == ["line 9", "line 10", "line 11"]
                        and t.status == "" and t.column == len("> half"))
        term.press(core.ENTER)

    helper = threading.Thread(target=other_thread)
    helper.start()
    assert screen.read_command("> ") == "half"
    helper.join(5)


def test_page_up_at_the_top_asks_for_more_and_older_lines_go_above():
    term = FakeTerminal(rows=4)
    screen = screen_on(term)
    for i in range(4):
        screen.print_message(f"line {i}")
    asked = []

    def at_top():
        asked.append(term.output[:])
        screen.print_older(["old 0", "old 1"])

    def other_thread():
        term.wait_until(lambda t: t.output == ["line 1", "line 2", "line 3"])
        term.press(core.PAGE_UP)  # shows the top: asks, and the view goes on up
        term.wait_until(lambda t: t.output == ["old 0", "old 1", "line 0"])
        term.press(core.ENTER)

    helper = threading.Thread(target=other_thread)
    helper.start()
    screen.read_command("> ", at_top=at_top)
    helper.join(5)
    assert asked[0] == ["line 0", "line 1", "line 2"]


def test_the_queue_of_lines_not_drawn_yet_is_bounded():
    screen = screen_on(FakeTerminal())
    for i in range(core.SCROLLBACK_LINES + 100):
        screen.print_message("x")
    assert len(screen._pending) == core.SCROLLBACK_LINES


def test_a_failed_setup_is_undone():
    term = FakeTerminal(fail_setup=True)
    with pytest.raises(RuntimeError):
        screen_on(term).start()
    assert term.calls == ["setup", "restore"]


def test_control_characters_from_messages_are_drawn_escaped():
    term = FakeTerminal()
    screen = screen_on(term)
    screen.print_message("evil\x1b[2J\x07 bell")
    term.press(core.CTRL_C)
    with pytest.raises(KeyboardInterrupt):
        screen.read_command("> ")
    assert term.output[-1] == "evil^[[2J^G bell"


def test_scrollback_is_bounded_in_lines_and_in_bytes():
    by_lines = core.Scrollback(limit=3)
    for i in range(5):
        by_lines.add([(f"line {i}", None)], 80)
    assert [entry[0][0][0] for entry in by_lines.lines] == ["line 2", "line 3", "line 4"]
    by_bytes = core.Scrollback(byte_limit=10_000)
    for i in range(100):
        by_bytes.add([(f"{i:03d} " + "é" * 1000, None)], 80)   # 2,004 bytes each
    assert by_bytes.size <= 10_000 and len(by_bytes.lines) == 4
    assert by_bytes.lines[-1][0][0][0].startswith("099 ")
    assert core.row_text(by_bytes.view(80, 100)[0]) == "096 "  # the oldest line kept


CLUSTERS = [("\U0001F44D\U0001F3FD", 2), ("\U0001F1EF\U0001F1F5", 2),
            ("\U0001F468\u200d\U0001F469\u200d\U0001F467", 2), ("e\u0301", 1),
            ("\u1100\u1161\u11a8", 2)]


@pytest.mark.parametrize("cluster, width", CLUSTERS)
def test_editing_moves_and_deletes_whole_grapheme_clusters(cluster, width):
    editor = editor_with(f"a{cluster}x")
    editor.backspace()
    editor.backspace()
    assert editor.text == "a"
    editor = editor_with(f"a{cluster}x")
    editor.left()
    editor.left()
    assert editor.cursor == 1
    _, _, column = core.input_view("> ", editor.text, editor.cursor, 80)
    assert column == 3
    editor.right()
    assert editor.cursor == 1 + len(cluster)
    assert core.input_view("> ", editor.text, editor.cursor, 80)[2] == 3 + width
    editor.delete()
    assert editor.text == f"a{cluster}"
    editor.move(1)
    editor.delete()
    assert editor.text == "a"


@pytest.mark.parametrize("cluster, width", CLUSTERS)
def test_widths_and_wrapping_count_clusters(cluster, width):
    assert core.display_width(cluster * 3) == 3 * width
    rows = core.wrap_segments([(cluster * 10, None)], 4)
    assert all(core.row_text(row) == cluster * (4 // width) for row in rows[:-1])
