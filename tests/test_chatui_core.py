"""The terminal-free pieces: editor, completion, wrapping, escaping, keys."""

import pytest

import chatui_core as core
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

    def complete(word, at_start):
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
