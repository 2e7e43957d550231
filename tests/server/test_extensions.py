"""Extension packets over real sockets: DMs, emotes, who, rooms, errors."""

from tests.support import RawClient, chat_from, join, leave


def dm(sender, to, text):
    return {"type": "dm", "from": sender, "to": to, "message": text}


def test_dm_reaches_only_the_recipient_and_the_sender(connect):
    pat, chris, lee = connect("pat"), connect("chris"), connect("lee")
    pat.send({"type": "dm", "to": "chris", "message": "psst"})
    pat.expect(dm("pat", "chris", "psst"))
    chris.expect(dm("pat", "chris", "psst"))
    lee.chat("marker")
    lee.expect(chat_from("lee", "marker"))
    assert not any(m["type"] == "dm" for m in lee.received)


def test_dm_to_a_nick_differing_only_in_case_uses_the_real_nick(connect):
    pat, chris = connect("pat"), connect("Chris")
    pat.send({"type": "dm", "to": "CHRIS", "message": "hi"})
    chris.expect(dm("pat", "Chris", "hi"))
    pat.expect(dm("pat", "Chris", "hi"))


def test_dm_to_oneself_arrives_once(connect):
    pat = connect("pat")
    pat.send({"type": "dm", "to": "pat", "message": "note to self"})
    pat.expect(dm("pat", "pat", "note to self"))
    pat.chat("marker")
    pat.expect(chat_from("pat", "marker"))
    assert sum(m["type"] == "dm" for m in pat.received) == 1


def test_dm_errors_go_to_the_sender_only(connect):
    pat, chris = connect("pat"), connect("chris")
    pat.send({"type": "dm", "to": "nobody", "message": "hello?"})
    assert "nobody" in pat.expect(lambda m: m["type"] == "error")["message"]
    pat.send({"type": "dm", "to": "chris", "message": ""})
    pat.expect(lambda m: m["type"] == "error")
    pat.send({"type": "emote", "message": ""})
    pat.expect(lambda m: m["type"] == "error")
    pat.chat("marker")
    chris.expect(chat_from("pat", "marker"))
    assert not any(m["type"] in ("error", "dm", "emote") for m in chris.received)


def test_emote_stays_in_the_room(connect):
    pat, chris, lee = connect("pat"), connect("chris"), connect("lee")
    lee.send({"type": "enter", "room": "games"})
    lee.expect({"type": "enter", "nick": "lee", "room": "games"})
    pat.send({"type": "emote", "message": "waves"})
    chris.expect({"type": "emote", "nick": "pat", "message": "waves"})
    pat.expect({"type": "emote", "nick": "pat", "message": "waves"})
    lee.send({"type": "emote", "message": "plays"})
    lee.expect({"type": "emote", "nick": "lee", "message": "plays"})
    pat.chat("marker")
    chris.expect(chat_from("pat", "marker"))
    assert not any(m["type"] == "emote" and m["nick"] == "lee" for m in chris.received)
    assert not any(m["type"] in ("emote", "chat") and m["nick"] == "pat" for m in lee.received)


def test_who_lists_only_the_current_room_sorted(connect):
    pat, chris = connect("pat"), connect("chris")
    connect("Lee")
    chris.send({"type": "enter", "room": "games"})
    chris.expect(lambda m: m["type"] == "enter")
    pat.send({"type": "who"})
    pat.expect({"type": "who", "room": "lobby", "nicks": ["Lee", "pat"]})
    chris.send({"type": "who"})
    chris.expect({"type": "who", "room": "games", "nicks": ["chris"]})


def test_enter_and_exit_go_to_the_right_members(connect):
    pat, chris, lee = connect("pat"), connect("chris"), connect("lee")
    lee.send({"type": "enter", "room": "games"})
    lee.expect({"type": "enter", "nick": "lee", "room": "games"})
    pat.expect({"type": "exit", "nick": "lee", "room": "lobby"})
    chris.send({"type": "enter", "room": "GAMES"})
    chris.expect({"type": "enter", "nick": "chris", "room": "games"})
    lee.expect({"type": "enter", "nick": "chris", "room": "games"})
    pat.expect({"type": "exit", "nick": "chris", "room": "lobby"})
    for mover in (lee, chris):  # the mover sees its enter, not its own exit
        assert not any(m["type"] == "exit" and m["nick"] == mover.nick for m in mover.received)
    lee.chat("in games")
    chris.expect(chat_from("lee", "in games"))
    pat.chat("in lobby")
    pat.expect(chat_from("pat", "in lobby"))
    assert not any(m.get("message") == "in games" for m in pat.received)


def test_rooms_counts_after_moves_and_disconnects(connect):
    pat, chris, lee = connect("pat"), connect("chris"), connect("lee")
    for client, room in ((chris, "games"), (lee, "games")):
        client.send({"type": "enter", "room": room})
        client.expect(lambda m, c=client: m["type"] == "enter" and m["nick"] == c.nick)
    pat.send({"type": "rooms"})
    pat.expect({"type": "rooms", "rooms": [{"name": "lobby", "count": 1},
                                           {"name": "games", "count": 2}]})
    chris.close()
    lee.send({"type": "enter", "room": "lobby"})
    lee.expect({"type": "enter", "nick": "lee", "room": "lobby"})
    pat.expect(leave("chris"))
    pat.send({"type": "rooms"})
    pat.expect({"type": "rooms", "rooms": [{"name": "lobby", "count": 2}]})


def test_bad_room_and_same_room_get_errors(connect):
    pat = connect("pat")
    for bad in ("two words", "", "/games", "x" * 33):
        pat.send({"type": "enter", "room": bad})
        pat.expect(lambda m: m["type"] == "error")
    pat.send({"type": "enter", "room": "Lobby"})
    assert "already" in pat.expect(lambda m: m["type"] == "error")["message"]


def test_base_only_client_keeps_working_amid_extensions(server, connect):
    base = RawClient(server.port, "base")
    base.expect(join("base"))
    pat, chris = connect("pat"), connect("chris")
    chris.send({"type": "enter", "room": "games"})
    pat.send({"type": "dm", "to": "chris", "message": "secret"})
    chris.send({"type": "emote", "message": "hides"})
    chris.chat("games only")
    pat.chat("lobby chat")
    base.expect(chat_from("pat", "lobby chat"))
    chris.close()
    base.expect(leave("chris"))
    seen = base.received
    assert join("pat") in seen and join("chris") in seen
    for message in seen:
        assert message["type"] in ("join", "leave", "chat", "exit", "enter")
        if message["type"] in ("join", "leave"):
            assert set(message) == {"type", "nick"}
        if message["type"] == "chat":
            assert set(message) == {"type", "nick", "message"}
    assert not any(m.get("message") in ("secret", "hides", "games only") for m in seen)
