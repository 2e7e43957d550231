"""The chaos run: its checker on histories made by hand (each figure can
fail), and the harness itself for about 30 seconds with a fixed seed."""

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from chaos_check import History, Receipt, Sent, Session, Stay, WhoAnswer, check  # noqa: E402
from chaos_client import expired_session_end  # noqa: E402
from chaos_faults import KINDS  # noqa: E402

END = 100.0


def everyone_in_lobby(*users):
    """A history where each user is in the lobby, in session 0, all along."""
    return History(stays=[Stay(u, 0, "lobby", 0.0, END) for u in users],
                   sessions=[Session(u, 0, 0.0, END) for u in users],
                   present={u: "lobby" for u in users})


def say(history, sender, seq, at, *, to=None, room="lobby", node="n1"):
    payload = f"{sender}-{seq}"
    history.sent.append(Sent(payload, sender, seq, at, node=node,
                             room=None if to else room, to=to))
    return payload


def receive(history, user, payload, at, session=0, node="n1", replay=False):
    history.receipts.append(Receipt(user, session, payload, at, node=node, replay=replay))


def test_a_history_where_everyone_got_everything_is_clean():
    history = everyone_in_lobby("ann", "bob")
    first = say(history, "ann", 1, 10.0)
    for user in ("ann", "bob"):
        receive(history, user, first, 10.1)
    dm = say(history, "bob", 1, 11.0, to="ann")
    receive(history, "bob", dm, 11.1)
    receive(history, "ann", dm, 11.2)
    verdict = check(history)
    assert verdict.clean, verdict
    assert (verdict.sent, verdict.echoed, verdict.received, verdict.judged) == (2, 2, 4, 2)


def test_an_echoed_chat_a_member_never_got_is_lost():
    history = everyone_in_lobby("ann", "bob", "cat")
    payload = say(history, "ann", 1, 10.0)
    receive(history, "ann", payload, 10.1)
    receive(history, "bob", payload, 10.1)
    verdict = check(history)
    assert (verdict.lost, verdict.judged) == (1, 2)
    assert verdict.examples["lost"][0]["to"] == "cat"
    assert not verdict.clean


def test_an_echoed_dm_its_party_never_got_is_lost():
    history = everyone_in_lobby("ann", "bob")
    payload = say(history, "ann", 1, 10.0, to="bob")
    receive(history, "ann", payload, 10.1)
    assert check(history).lost == 1


def test_a_message_never_echoed_is_owed_to_nobody():
    history = everyone_in_lobby("ann", "bob")
    say(history, "ann", 1, 10.0)
    verdict = check(history)
    assert (verdict.echoed, verdict.lost, verdict.judged) == (0, 0, 0)


def test_who_moved_during_the_window_is_not_owed_the_message():
    history = History(stays=[Stay("ann", 0, "lobby", 0.0, END),
                             Stay("bob", 0, "lobby", 0.0, 10.2),  # asked to move away
                             Stay("bob", 0, "games", 10.4, END)],
                      sessions=[Session("ann", 0, 0.0, END), Session("bob", 0, 0.0, END)])
    payload = say(history, "ann", 1, 10.0)
    receive(history, "ann", payload, 10.1)
    assert check(history).judged == 0


def test_a_late_live_receipt_widens_the_window():
    """Another member got it 5 s later (Redis was paused): bob, who left
    meanwhile, may have left before his node read it."""
    history = History(stays=[Stay("ann", 0, "lobby", 0.0, END),
                             Stay("cat", 0, "lobby", 0.0, END),
                             Stay("bob", 0, "lobby", 0.0, 13.0)],
                      sessions=[Session(u, 0, 0.0, END) for u in ("ann", "bob", "cat")])
    payload = say(history, "ann", 1, 10.0)
    receive(history, "ann", payload, 10.1)
    receive(history, "cat", payload, 15.0)
    verdict = check(history)
    assert (verdict.lost, verdict.judged) == (0, 1)


def test_a_move_is_owed_the_new_rooms_chat_from_when_the_other_nodes_learned_it():
    """bob moved on n2 at 10 (echoed at once) while Redis was away; n1 read
    the move at 20: ann's chat at 15, from n1, came before it in the stream."""
    history = History(stays=[Stay("ann", 0, "games", 0.0, END),
                             Stay("cat", 0, "games", 0.0, END),
                             Stay("bob", 0, "games", 10.0, END, node="n2")],
                      sessions=[Session(u, 0, 0.0, END) for u in ("ann", "bob", "cat")],
                      entered=[("bob", "games", 10.0, "n2"), ("bob", "games", 20.0, "n1")])
    before = say(history, "ann", 1, 15.0, room="games", node="n1")
    after = say(history, "ann", 2, 25.0, room="games", node="n1")
    for payload, at in ((before, 15.1), (after, 25.1)):
        receive(history, "ann", payload, at)
        receive(history, "cat", payload, at)
    verdict = check(history)
    assert (verdict.lost, verdict.judged) == (1, 3)
    assert verdict.examples["lost"][0]["payload"] == after


def test_a_line_said_while_its_node_was_cut_off_is_owed_until_it_reached_another_node():
    """ann's node had lost Redis: her line reached the others only at 20,
    replayed; bob, who moved away at 15, had moved first in the stream."""
    history = History(stays=[Stay("ann", 0, "lobby", 0.0, END),
                             Stay("cat", 0, "lobby", 0.0, END),
                             Stay("bob", 0, "lobby", 0.0, 15.0)],
                      sessions=[Session(u, 0, 0.0, END) for u in ("ann", "bob", "cat")])
    payload = say(history, "ann", 1, 10.0, node="n1")
    receive(history, "ann", payload, 10.1, node="n1")
    receive(history, "cat", payload, 20.0, node="n2", replay=True)
    verdict = check(history)
    assert (verdict.lost, verdict.judged) == (0, 1)
    history.receipts[-1] = Receipt("cat", 0, payload, 10.2, node="n2", replay=True)
    assert (check(history).lost, check(history).judged) == (1, 2)


def test_a_session_that_fell_back_to_a_fresh_join_is_owed_nothing_sent_while_away():
    history = History(stays=[Stay("ann", 0, "lobby", 0.0, END),
                             Stay("bob", 0, "lobby", 0.0, 9.0),    # lost at 9
                             Stay("bob", 1, "lobby", 30.0, END)],  # joined afresh at 30
                      sessions=[Session("ann", 0, 0.0, END), Session("bob", 0, 0.0, 9.0),
                                Session("bob", 1, 30.0, END)])
    away = say(history, "ann", 1, 10.0)
    back = say(history, "ann", 2, 40.0)
    receive(history, "ann", away, 10.1)
    receive(history, "ann", back, 40.1)
    verdict = check(history)
    assert (verdict.lost, verdict.judged) == (1, 1)
    assert verdict.examples["lost"][0] == {"payload": back, "to": "bob", "session": 1,
                                           "window": [39.5, 40.6]}


def test_a_session_told_it_expired_after_its_grace_is_owed_nothing_since_its_last_packet():
    """Heard last at 100 on its live connection, lost at 104, its resumes
    refused (the store away) until 131, told then that it expired (grace
    30), it joined afresh after a last failed connection at 140."""
    assert expired_session_end(100.0, 131.0, 30.0, last_loss=140.0) == 100.0


def test_a_session_told_it_expired_within_its_grace_is_owed_up_to_its_fresh_join():
    """Told at 112 (12 s after its last packet: inside the grace of 30) that
    its session had expired, refused its nick until 166 while the session
    held it: a broken promise, every line meanwhile is counted lost."""
    assert expired_session_end(100.0, 112.0, 30.0, last_loss=166.0) == 166.0
    assert expired_session_end(None, None, 30.0, last_loss=166.0) == 166.0


def test_what_a_killed_node_never_passed_on_is_unwritten_not_lost():
    history = everyone_in_lobby("ann", "bob", "cat")
    payload = say(history, "ann", 1, 10.0, node="n1")
    receive(history, "ann", payload, 10.1, node="n1")
    receive(history, "bob", payload, 10.1, node="n1")  # on the same node
    history.kills.append(("n1", 10.2))
    verdict = check(history)
    assert (verdict.unwritten, verdict.lost) == (1, 0)
    assert verdict.clean


def test_an_echo_read_just_after_its_node_was_killed_is_still_unwritten():
    """Seed 7, 600 s: the node echoed the line and was SIGKILLed (Redis was
    away: it was never written) a moment before its client read the echo."""
    history = everyone_in_lobby("ann", "bob", "cat")
    payload = say(history, "ann", 1, 10.0, node="n1")
    history.kills.append(("n1", 10.05))
    receive(history, "ann", payload, 10.1, node="n1")
    receive(history, "bob", payload, 10.1, node="n1")
    verdict = check(history)
    assert (verdict.unwritten, verdict.lost) == (1, 0)


def test_a_killed_nodes_message_that_reached_another_node_must_reach_everyone():
    history = everyone_in_lobby("ann", "bob", "cat")
    payload = say(history, "ann", 1, 10.0, node="n1")
    receive(history, "ann", payload, 10.1, node="n1")
    receive(history, "bob", payload, 10.1, node="n2")  # so it was in Redis
    history.kills.append(("n1", 10.2))
    verdict = check(history)
    assert (verdict.unwritten, verdict.lost) == (0, 1)


def test_a_kill_before_the_echo_does_not_excuse_a_loss():
    history = everyone_in_lobby("ann", "bob")
    payload = say(history, "ann", 1, 10.0, node="n1")
    receive(history, "ann", payload, 12.0, node="n2", replay=True)  # echoed after a resume
    history.kills.append(("n1", 10.5))
    assert check(history).lost == 1


def test_a_second_copy_in_one_session_is_duplicated_but_not_across_sessions():
    history = everyone_in_lobby("ann", "bob")
    payload = say(history, "ann", 1, 10.0)
    receive(history, "ann", payload, 10.1)
    receive(history, "bob", payload, 10.1)
    receive(history, "bob", payload, 12.0, replay=True)
    verdict = check(history)
    assert verdict.duplicated == 1 and not verdict.clean
    history.receipts[-1] = Receipt("bob", 1, payload, 12.0)
    assert check(history).duplicated == 0


def test_one_senders_messages_in_the_other_order_are_reordered():
    history = everyone_in_lobby("ann", "bob", "cat")
    first = say(history, "ann", 1, 10.0)
    second = say(history, "ann", 2, 10.01)
    other = say(history, "cat", 1, 10.005)
    for payload, at in ((first, 10.1), (second, 10.2), (other, 10.3)):
        receive(history, "ann", payload, at)
        receive(history, "cat", payload, at)
    receive(history, "bob", other, 10.1)  # another sender's in between is fine
    receive(history, "bob", second, 10.2)
    receive(history, "bob", first, 10.3)
    verdict = check(history)
    assert (verdict.reordered, verdict.lost, verdict.duplicated) == (1, 0, 0)
    assert verdict.examples["reordered"][0]["payload"] == first


def test_who_naming_someone_gone_is_a_ghost_and_leaving_out_someone_there_is_missing():
    history = everyone_in_lobby("ann", "bob")
    history.who = [WhoAnswer("ann", "n1", "lobby", ("ann", "bob")),
                   WhoAnswer("bob", "n2", "lobby", ("ann", "bob", "zed")),
                   WhoAnswer("bob", "n3", "lobby", ("bob",))]
    verdict = check(history)
    assert (verdict.ghosts, verdict.missing) == (1, 1)
    assert verdict.examples["ghosts"] == [{"node": "n2", "nick": "zed"}]
    assert verdict.examples["missing"] == [{"node": "n3", "nick": "ann"}]
    history.who = history.who[:1]
    assert check(history).clean



# ---- the harness itself ----

CHAOS_SECONDS = 12  # seed 9's seven faults, one of each kind, all start within 7 s
CHAOS_SEED = 9


@pytest.mark.timeout(CHAOS_SECONDS + 400)
def test_a_chaos_run_with_a_fixed_seed_finds_every_figure_zero(tmp_path):
    """The whole run: valkey, three nodes, 200 session clients, every kind
    of fault (each once: a short run packs them close); its exit status is
    0 only if lost, duplicated, reordered, ghosts and missing are all 0."""
    record_file = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--seconds", str(CHAOS_SECONDS),
         "--seed", str(CHAOS_SEED), "--json", str(record_file)],
        capture_output=True, text=True, timeout=CHAOS_SECONDS + 360)
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    found = {k: v for k, v in record.get("verdict", {}).items() if k == "examples"}
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-3000:]}\n{found}"
    line = done.stdout.strip().splitlines()[-1]
    assert line.startswith(f"chaos: seed={CHAOS_SEED} seconds={CHAOS_SECONDS} nodes=3 "
                           "clients=200 "), line
    assert record["verdict"]["judged"] > 0, line
    assert sorted(fault["kind"] for fault in record["faults"]) == sorted(KINDS), line
