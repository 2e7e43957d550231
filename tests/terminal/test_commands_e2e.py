"""Client commands end to end under both UIs: what is sent and what shows."""

import re

import pytest

from tests.support import ROOT, ServerProcess, chat_from, join
from tests.terminal import TerminalClient, one_ui, with_chris as ready


@one_ui
def test_message_and_msg_send_a_dm(terminal, connect):
    term, chris = ready(terminal, connect)
    term.say("/message chris how's it going?")
    chris.expect({"type": "dm", "from": "pat", "to": "chris", "message": "how's it going?"})
    term.wait_for_line(r"pat -> chris: how's it going\?")
    term.say("/msg CHRIS short form")
    term.wait_for_line(r"pat -> chris: short form")
    chris.send({"type": "dm", "to": "pat", "message": "fine"})
    term.wait_for_line(r"chris -> pat: fine")


@one_ui
def test_message_errors_show_locally_or_from_the_server(terminal, connect):
    term, _ = ready(terminal, connect)
    term.say("/message nobody hello")
    term.wait_for_line(r"\*\*\* error: no such user: nobody")
    term.say("/msg chris")
    term.wait_for_line(r"\*\*\* usage: /msg NICK TEXT")


@one_ui
def test_me_sends_an_emote(terminal, connect):
    term, chris = ready(terminal, connect)
    term.say("/me goes out to buy some snacky cakes")
    chris.expect({"type": "emote", "nick": "pat", "message": "goes out to buy some snacky cakes"})
    term.wait_for_line(r"\[pat goes out to buy some snacky cakes\]")


@one_ui
def test_who_and_rooms(terminal, connect):
    term, chris = ready(terminal, connect)
    term.say("/who")
    term.wait_for_line(r"\*\*\* in lobby: chris, pat")
    chris.send({"type": "enter", "room": "games"})
    term.wait_for_line(r"\*\*\* chris left room lobby")
    term.say("/rooms")
    term.wait_for_line(r"\*\*\* rooms: lobby \(1\), games \(1\)")


@one_ui
def test_join_shows_the_room_in_the_prompt_and_leave_goes_back(terminal, connect):
    term, chris = ready(terminal, connect)
    term.say("/join games")
    term.wait_for_line(r"\*\*\* pat entered room games")
    term.prompt_room = "games"
    term.wait_for_prompt()
    term.say("only for games")
    term.wait_for_line("pat: only for games")
    chris.chat("lobby talk")
    term.say("/leave")
    term.wait_for_line(r"\*\*\* pat entered room lobby")
    term.prompt_room = ""
    term.wait_for_prompt()
    assert "lobby talk" not in term.text
    assert not any(m.get("message") == "only for games" for m in chris.received)


@one_ui
def test_bad_room_name_is_refused_locally(terminal, connect):
    term, _ = ready(terminal, connect)
    term.say("/join")
    term.wait_for_text("usage: /join ROOM")


HELP_SHOWS = ("/q", "/message NICK TEXT (/msg)", "/me TEXT", "/who", "/join ROOM", "/leave",
              "/rooms", "/nick NEW", "/away [TEXT]", "/ignore [NICK]", "/unignore NICK",
              "/op PASSWORD", "/kick NICK [REASON]", "/ban [NICK MINUTES [REASON]]",
              "/reconnect", "/help [COMMAND | keys]", "//TEXT")


def test_help_fits_80x24_and_keys_and_details_have_their_own(terminal):
    term = terminal("pat")  # 80x24
    term.wait_for_text("pat has joined")
    term.say("/help")
    term.wait_for_text("*** commands (/help COMMAND for one of them, /help keys for the keys):")
    term.wait_for_text("client: /reconnect   /help [COMMAND | keys]   /q")  # the last line
    for shown in HELP_SHOWS:  # all of it on the screen at once
        assert shown in term.text, shown
    assert "/look" not in term.text and "world" not in term.text  # no world here
    assert "pat has joined" in term.lines[0]  # nothing scrolled away
    term.say("/help keys")
    term.wait_for_text("Ctrl-C, Ctrl-D (empty line)")
    assert "PageUp/PageDown" in term.text
    term.say("/help msg")
    term.wait_for_text("*** /message NICK TEXT (also /msg): a direct message, seen by NICK")


@one_ui
def test_unknown_command_is_answered_locally(terminal, connect):
    term, chris = ready(terminal, connect)
    term.say("/dance wildly")
    term.wait_for_line(r"\*\*\* unknown command: /dance \(try /help\)")
    term.say("//dance is a chat")
    chris.expect(chat_from("pat", "/dance is a chat"))
    assert not any(m.get("message", "").startswith("dance") for m in chris.received)


@one_ui
def test_away_and_ignore(terminal, connect):
    term, chris = ready(terminal, connect)
    term.say("/away lunch")
    term.wait_for_text("*** you are away: lunch")
    chris.send({"type": "dm", "to": "pat", "message": "there?"})
    chris.expect({"type": "info", "message": "pat is away: lunch"})
    term.say("/who")
    term.wait_for_text("*** in lobby: chris, pat (away)")
    term.say("/ignore chris")
    term.wait_for_text("*** ignoring chris")
    chris.chat("you cannot see this")
    chris.send({"type": "emote", "message": "waves unseen"})
    term.say("/ignore")
    term.wait_for_text("*** ignoring: chris")
    term.say("/unignore chris")
    term.wait_for_text("*** no longer ignoring chris")
    chris.chat("now you can")
    term.wait_for_text("chris: now you can")
    assert "cannot see" not in term.text and "waves unseen" not in term.text


@one_ui
def test_nick_changes_the_prompt_and_everyone_sees_it(terminal, connect):
    term, chris = ready(terminal, connect)
    term.say("/nick pam")
    term.wait_for_text("*** pat is now known as pam")
    chris.expect({"type": "nick", "old": "pat", "nick": "pam"})
    term.nick = "pam"
    term.wait_for_prompt()
    term.say("hello as pam")
    chris.expect(chat_from("pam", "hello as pam"))


@one_ui
@pytest.mark.server_args("--op-password-file", str(ROOT / "tests" / "data" / "ops"))
def test_op_and_kick(terminal, connect):
    term, chris = ready(terminal, connect)
    term.say("/op opsecret")
    term.wait_for_text("*** you are an operator now")
    term.say("/kick chris too chatty")
    term.wait_for_text("*** chris was kicked by pat (too chatty)")
    term.wait_for_text("*** chris has left the chat")
    chris.expect_closed()


@one_ui
def test_the_client_reads_the_server_password_from_a_file(server_with_password, ui, tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("sesame\n")
    term = TerminalClient("pat", server_with_password.port, ui,
                          extra=("--password-file", str(secret)))
    try:
        term.wait_for_text("*** pat has joined the chat")
    finally:
        term.close()


@pytest.fixture
def server_with_password(tmp_path):
    (tmp_path / "server-pw").write_text("sesame\n")
    process = ServerProcess("--password-file", str(tmp_path / "server-pw"))
    yield process
    process.cleanup()


def test_the_password_prompt_says_once_what_is_shown_even_with_timestamps(
        server_with_password, ui):
    """Issue 20, findings 1 and 6: --timestamps crashed on the first line
    without a server time; the prompt's lines contradicted each other."""
    port = server_with_password.port
    term = TerminalClient("pat", port, ui, extra=("--timestamps",))
    asked = f"password for 127.0.0.1:{port}: "
    try:
        term.wait_for(lambda t: t.lines[-1] == asked.rstrip(), what="the password prompt")
        told = " ".join(line for line in term.lines[:-1] if line)
        assert re.fullmatch(r"\d\d:\d\d \*\*\* error: this server needs a server password: "
                            r"type it at the prompt below \(shown as \*\)", told), told
        term.type("guess")
        term.wait_for(lambda t: t.lines[-1] == asked + "*****", what="five stars")
        term.key("enter")
        term.wait_for_text("wrong server password: type it at the prompt below")
        term.type("sesame")
        term.key("enter")
        term.wait_for_line(r"\d\d:\d\d \*\*\* pat has joined the chat")
        assert term.text.count("password") == 2 and "sesame" not in term.text
    finally:
        term.close()


OPS = str(ROOT / "tests" / "data" / "ops")


def operator(connect):
    op = connect("op")
    op.send({"type": "op", "password": "opsecret"})
    op.expect({"type": "info", "message": "you are an operator now"})
    return op


def joins_of(client, nick):
    client.chat("marker")  # everything before it has arrived
    client.expect(lambda m: m == chat_from(client.nick, "marker"))
    return [m for m in client.received if m == join(nick)]


@pytest.mark.server_args("--op-password-file", OPS)
def test_a_kicked_client_stays_out_until_reconnect_and_shows_nothing_twice(terminal, connect):
    """Issue 20, finding 2: a kicked client was back within a second."""
    op = operator(connect)
    term = terminal("frank")
    term.wait_for_text("frank has joined")
    op.chat("before the kick")
    term.wait_for_text("op: before the kick")
    op.send({"type": "kick", "nick": "frank", "reason": "being rude"})
    term.wait_for_text("*** frank was kicked by op (being rude)")
    term.wait_for_text("*** kicked: the client will not reconnect by itself (/reconnect, or "
                       "/q to quit)")
    term.wait_quiet(1.0)  # twice the first retry's wait
    assert "reconnecting..." not in term.text and "error" not in term.text
    assert len(joins_of(op, "frank")) == 1
    term.say("/reconnect")
    term.wait_for_text("*** reconnected; messages sent while you were away are lost")
    op.expect(join("frank"))
    term.wait_quiet(0.3)
    assert term.text.count("op: before the kick") == 1  # the history is not shown again
    term.say("back")
    op.expect(chat_from("frank", "back"))


@pytest.mark.server_args("--op-password-file", OPS)
def test_a_banned_client_says_so_once_and_does_not_retry(terminal, connect):
    """Issue 20, finding 2: a banned client retried for ever, printing the
    refusal at every step of the backoff."""
    op = operator(connect)
    term = terminal("frank")
    term.wait_for_text("frank has joined")
    op.send({"type": "ban", "nick": "frank", "minutes": 1, "reason": "spamming"})
    term.wait_for_text("*** frank was kicked by op (banned for 1 minutes: spamming)")
    halted = "*** banned: the client will not reconnect by itself"
    term.wait_for_text(halted)
    term.say("/reconnect")
    term.wait_for_text("*** error: you are banned from this server for 1 more minutes "
                       "(spamming)")
    term.wait_for(lambda t: t.text.count(halted) == 2, what="the second halt")
    term.wait_quiet(1.0)
    assert term.text.count("you are banned from this server") == 1
    assert term.text.count(halted) == 2 and "reconnecting..." not in term.text.replace(
        "*** reconnecting to", "")
    assert len(joins_of(op, "frank")) == 1
    term.say("/q")
    assert term.wait_exit() == 0
