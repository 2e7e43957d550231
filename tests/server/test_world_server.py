"""World mode over real sockets: walking, places that scope the chat, items,
the state kept across a restart, and a broken world refused at start-up."""

import json
import os

import pytest

from tests.support import RawClient, ServerProcess, chat_from, join, run_server


def walker(port, nick):
    """A raw client past its join and its first look."""
    user = RawClient(port, nick)
    user.expect(join(nick))
    user.first_look = user.expect(lambda m: m["type"] == "look")
    return user


def go(user, direction):
    user.send({"type": "go", "exit": direction})
    return user.expect(lambda m: m["type"] in ("look", "error"))


@pytest.fixture
def mud(tmp_path):
    process = ServerProcess("--world", "builtin", "--state", str(tmp_path / "state.json"))
    yield process
    process.cleanup()


def test_walkers_meet_talk_in_their_place_and_share_its_items(mud):
    pat, chris = walker(mud.port, "pat"), walker(mud.port, "chris")
    assert pat.first_look["title"] == "The Jetty" and "coil of rope" in \
        " ".join(pat.first_look["items"])
    for direction in ("north", "north", "west"):
        assert go(pat, direction)["type"] == "look"
    assert go(chris, "north")["title"] == "The Cliff Path"
    go(chris, "north")
    assert go(chris, "west")["people"] == ["chris", "pat"]
    pat.expect({"type": "enter", "nick": "chris", "room": "The Keeper's Cottage", "way": "west"})
    lee = walker(mud.port, "lee")  # still on the jetty
    chris.chat("is the kettle on?")
    pat.expect(chat_from("chris", "is the kettle on?"))
    lee.chat("hello down here")
    chris.chat("marker")
    pat.expect(chat_from("chris", "marker"))
    assert chat_from("lee", "hello down here") not in pat.received
    pat.send({"type": "take", "item": "brass key"})
    chris.expect({"type": "emote", "nick": "pat", "message": "picks up the brass key"})
    chris.send({"type": "take", "item": "brass key"})
    assert chris.expect(lambda m: m["type"] == "error")["message"] == \
        "There is no brass key here."


def test_a_restart_with_state_keeps_places_and_inventories(tmp_path):
    state = tmp_path / "state.json"
    first = ServerProcess("--world", "builtin", "--state", str(state))
    try:
        pat = walker(first.port, "pat")
        for direction in ("north", "north", "west"):
            go(pat, direction)
        pat.send({"type": "take", "item": "key"})
        pat.expect({"type": "inventory", "items": ["a brass key"]})
        go(pat, "east")
    finally:
        assert first.stop() == 0
    saved = json.loads(state.read_text())
    assert saved["carried"] == {"pat": ["brass-key"]} and saved["players"]["pat"] == "yard"
    second = ServerProcess("--world", "builtin", "--state", str(state))
    try:
        pat = walker(second.port, "pat")
        assert pat.first_look["title"] == "The Keeper's Yard"
        pat.send({"type": "inventory"})
        pat.expect({"type": "inventory", "items": ["a brass key"]})
        go(pat, "north")
        assert go(pat, "down")["title"] == "The Oil Cellar"  # the key still opens it
    finally:
        second.cleanup()


def test_a_broken_world_or_state_is_refused_at_start_up_with_exit_2(tmp_path):
    broken = tmp_path / "broken.toml"
    broken.write_text('start = "hall"\n[places.hall]\ntitle = "Hall"\ndescription = "x"\n'
                      'exits = { north = "nowhere" }\n')
    result = run_server("0", "--world", str(broken))
    assert result.returncode == 2
    assert f"{broken}, line 5:" in result.stderr and '"nowhere"' in result.stderr
    bad_state = tmp_path / "state.json"
    bad_state.write_text("{not json")
    result = run_server("0", "--world", "builtin", "--state", str(bad_state))
    assert result.returncode == 2 and "cannot read the world state" in result.stderr
    result = run_server("0", "--state", "x.json")
    assert result.returncode == 2 and "--state needs --world" in result.stderr


def refused_at_start(*options: str) -> str:
    """The server's one line of refusal (it must exit 2 without a traceback)."""
    result = run_server("0", *options)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, \
        result.stderr
    return result.stderr


def test_world_files_that_would_crash_or_hang_start_up_are_refused_in_one_line(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    assert "nested too deeply" in refused_at_start("--world", str(deep))
    articles = tmp_path / "articles.toml"
    articles.write_text('start = "hall"\n[places.hall]\ntitle = "Hall"\ndescription = "x"\n'
                        'items = ["box"]\n[items.box]\nname = "box"\ndescription = "A box."\n'
                        f'article = "{"a" * 2000}"\n')
    assert f"{articles}, line 9:" in refused_at_start("--world", str(articles))
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    assert "not a regular file" in refused_at_start("--world", str(fifo))


def test_state_files_that_would_crash_or_hang_start_up_are_refused_in_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    assert "nested too deeply" in refused_at_start("--world", "builtin", "--state", str(deep))
    lists = tmp_path / "lists.json"
    lists.write_text(json.dumps({"players": {"pat": ["yard"]}}))
    assert '"players" must map' in refused_at_start("--world", "builtin", "--state", str(lists))
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    assert "not a regular file" in refused_at_start("--world", "builtin", "--state", str(fifo))
