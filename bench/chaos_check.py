"""The chaos run's checker: what every client received, judged against
what every sender saw echoed (SPEC, "Where features meet: the guarantees").

Owns the judgement and nothing else: it is given a :class:`History` (plain
records the run made, or a test made by hand) and returns a
:class:`Verdict` with the figures.

- ``lost``: pairs (receiver, message) where the message was echoed to its
  sender, the receiver was entitled to it, and never got it.  Entitled: a
  member of the message's room (for a DM: its other party) for the whole
  *window* of the message, within one session.  The window runs from the
  send (less a margin) to the last moment the message was seen live by
  anyone, the echo included, and at least to its first receipt on another
  node (plus the margin): within it the receiver's node may have applied
  it at any time, so only a stay covering all of it says the receiver was
  a member then.
- ``unwritten``: echoed messages whose sender's node was SIGKILLed after
  the send (the echo may be read just after the kill) and that nobody on
  another node ever received: what the README
  says a killed node may not yet have written to Redis.  They are counted
  here, never in ``lost``, and are not judged further.
- ``duplicated``: copies beyond the first of one message in one session.
- ``reordered``: messages a session received after a later one (a higher
  number) from the same sender.
- ``ghosts`` / ``missing``: after the quiet period, each client's ``who``
  answer (from whichever node it is on) against who is really connected in
  that room: a name listed who is not there, a name there not listed;
  each (node, name) counted once.

Stays (a user's certain membership of a room) are built by the run: from
the confirmation of a room (its own join, its ``enter`` echo, the ``who``
answer after a reconnection) to the moment it asked to move, or to the
connection loss before a fresh join (a session that fell back to a fresh
join is not entitled to what was sent while it was away), or to the loss
before a resume whose ``who`` named another room: then the stay it was
told of is dropped (a *misplaced* stay: a move that a SIGKILLed node
echoed but never wrote, so for the cluster it never happened), and the
real room's stay starts at that loss.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from typing import Iterable

MARGIN = 0.5  # seconds either side of a message's window


@dataclass(frozen=True)
class Sent:
    """A chat or DM a client sent: ``payload`` is unique in the run."""

    payload: str
    sender: str
    seq: int                 # the sender's own count: its order
    at: float                # when it was written to the socket
    node: str = ""           # the sender's node then (from the ids it had seen)
    room: str | None = None  # a room chat: the sender's confirmed room
    to: str | None = None    # a DM: its other party


@dataclass(frozen=True)
class Receipt:
    """A chat or DM that reached a client (history items are not receipts)."""

    user: str
    session: int             # which of the user's sessions (0, then 1 after a fresh join...)
    payload: str
    at: float
    node: str = ""           # the node the receiving connection was on
    replay: bool = False     # part of a resume's replay


@dataclass(frozen=True)
class Stay:
    """A user certainly in ``room``, in one session, from ``start`` to
    ``end``; ``node``: where it moved there (empty: it joined, or a
    reconnection's ``who`` named the room)."""

    user: str
    session: int
    room: str
    start: float
    end: float
    node: str = ""


@dataclass(frozen=True)
class Session:
    """A user's session: from its own join to the loss before a fresh join
    (or the end of the run)."""

    user: str
    number: int
    start: float
    end: float


@dataclass(frozen=True)
class WhoAnswer:
    asker: str
    node: str
    room: str
    nicks: tuple[str, ...]


@dataclass
class History:
    sent: list[Sent] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    stays: list[Stay] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    kills: list[tuple[str, float]] = field(default_factory=list)   # (node, when SIGKILLed)
    who: list[WhoAnswer] = field(default_factory=list)
    present: dict[str, str] = field(default_factory=dict)         # at the end: user -> room
    entered: list[tuple[str, str, float, str]] = field(default_factory=list)  # another
    # user's ``enter`` received: (its nick, the room, when, the receiving node)


@dataclass
class Verdict:
    sent: int = 0
    echoed: int = 0
    received: int = 0
    lost: int = 0
    unwritten: int = 0
    duplicated: int = 0
    reordered: int = 0
    ghosts: int = 0
    missing: int = 0
    judged: int = 0          # (receiver, message) pairs that were owed
    examples: dict[str, list] = field(default_factory=dict)  # a few of each failure

    @property
    def clean(self) -> bool:
        return not (self.lost or self.duplicated or self.reordered or self.ghosts
                    or self.missing)

    def example(self, figure: str, what) -> None:
        kept = self.examples.setdefault(figure, [])
        if len(kept) < 20:
            kept.append(what)

    def as_dict(self) -> dict:
        return asdict(self)


def check(history: History, margin: float = MARGIN) -> Verdict:
    return _check_into(history, Verdict(), margin)


def _check_into(history: History, verdict: Verdict, margin: float = MARGIN) -> Verdict:
    verdict.sent, verdict.received = len(history.sent), len(history.receipts)
    got = _receipts_by_message(history.receipts)
    echoes = _echo_times(history.sent, got)
    verdict.echoed = len(echoes)
    _judge_losses(history, got, echoes, margin, verdict)
    _judge_copies_and_order(history, verdict)
    _judge_presence(history, verdict)
    return verdict


# ---- lost ----

def _receipts_by_message(receipts: Iterable[Receipt]) -> dict[str, list[Receipt]]:
    got: dict[str, list[Receipt]] = defaultdict(list)
    for receipt in receipts:
        got[receipt.payload].append(receipt)
    return got


def _echo_times(sent: list[Sent], got: dict[str, list[Receipt]]) -> dict[str, float]:
    """payload -> when its sender first received it back."""
    echoes = {}
    for message in sent:
        own = [r.at for r in got.get(message.payload, ()) if r.user == message.sender]
        if own:
            echoes[message.payload] = min(own)
    return echoes


def _judge_losses(history: History, got: dict[str, list[Receipt]], echoes: dict[str, float],
                  margin: float, verdict: Verdict) -> None:
    stays_in: dict[str, list[Stay]] = defaultdict(list)
    for stay in known_stays(history):
        stays_in[stay.room].append(stay)
    sessions_of: dict[str, list[Session]] = defaultdict(list)
    for session in history.sessions:
        sessions_of[session.user].append(session)
    for message in history.sent:
        if message.payload not in echoes:
            continue  # never acknowledged: nothing was promised
        receipts = got.get(message.payload, [])
        if _unwritten(message, echoes[message.payload], receipts, history.kills):
            verdict.unwritten += 1
            continue
        start = message.at - margin
        end = _window_end(message, echoes[message.payload], receipts) + margin
        owed = _owed(message, start, end, stays_in, sessions_of)
        had = {(r.user, r.session) for r in receipts}
        for user, session in owed:
            verdict.judged += 1
            if (user, session) not in had:
                verdict.lost += 1
                verdict.example("lost", {"payload": message.payload, "to": user,
                                         "session": session, "window": [start, end]})


def known_stays(history: History) -> list[Stay]:
    """The stays, each from when the whole cluster knew of it.  A move is
    echoed by the mover's node at once, but the other nodes learn it from
    the stream, which may be much later (Redis was away): in the stream's
    order, what others said in the new room before that came before the
    move, and is not owed to the mover (a node it resumes on replays in
    that order).  So a stay that began with a move begins when the last
    other node had shown that ``enter`` to one of its clients."""
    seen: dict[tuple[str, str], list[tuple[float, str]]] = defaultdict(list)
    for nick, room, at, node in history.entered:
        seen[(nick, room)].append((at, node))
    stays = []
    for stay in history.stays:
        if stay.node:
            first: dict[str, float] = {}
            for at, node in seen.get((stay.user, stay.room), ()):
                if node != stay.node and stay.start - MARGIN <= at <= stay.end:
                    first[node] = min(at, first.get(node, at))
            if first:
                stay = Stay(stay.user, stay.session, stay.room,
                            max(stay.start, *first.values()), stay.end, stay.node)
        stays.append(stay)
    return stays


def _window_end(message: Sent, echoed: float, receipts: list[Receipt]) -> float:
    """Until when the receivers' nodes may have applied the message: its
    echo, its last live receipt, and at least its first receipt off its
    node (live or replayed: by then it was in Redis; a node cut off from
    Redis passes on what its users said only when Redis is back, and in
    the stream's order a receiver who moved meanwhile had moved first)."""
    live = [r.at for r in receipts if not r.replay]
    elsewhere = [r.at for r in receipts if r.node != message.node]
    return max([echoed, *live, min(elsewhere, default=echoed)])


def _unwritten(message: Sent, echoed: float, receipts: list[Receipt],
               kills: list[tuple[str, float]]) -> bool:
    """Its node was SIGKILLed after the send and nobody off that node got
    it (its echo included).  After the send, not after the echo: the echo
    read a moment after the kill was written before it."""
    killed = any(node == message.node and at >= message.at for node, at in kills)
    return killed and all(r.node == message.node for r in receipts)


def _owed(message: Sent, start: float, end: float, stays_in: dict[str, list[Stay]],
          sessions_of: dict[str, list[Session]]) -> set[tuple[str, int]]:
    """The (user, session) pairs that were entitled to the message."""
    if message.to is not None:
        return {(s.user, s.number) for s in sessions_of.get(message.to, ())
                if s.start <= start and s.end >= end and s.user != message.sender}
    return {(s.user, s.session) for s in stays_in.get(message.room, ())
            if s.start <= start and s.end >= end and s.user != message.sender}


# ---- duplicated, reordered ----

def _judge_copies_and_order(history: History, verdict: Verdict) -> None:
    order = {m.payload: (m.sender, m.seq) for m in history.sent}
    copies: Counter = Counter()
    highest: dict[tuple[str, int, str], tuple[int, str]] = {}
    for receipt in sorted(history.receipts, key=lambda r: r.at):
        key = (receipt.user, receipt.session, receipt.payload)
        copies[key] += 1
        if copies[key] > 1:
            verdict.duplicated += 1
            verdict.example("duplicated", {"payload": receipt.payload, "to": receipt.user,
                                           "session": receipt.session, "at": receipt.at})
            continue
        if receipt.payload not in order:
            continue
        sender, seq = order[receipt.payload]
        stream = (receipt.user, receipt.session, sender)
        if stream in highest and seq < highest[stream][0]:
            verdict.reordered += 1
            verdict.example("reordered", {"payload": receipt.payload, "to": receipt.user,
                                          "after": highest[stream][1], "at": receipt.at})
        else:
            highest[stream] = (seq, receipt.payload)


# ---- ghosts, missing ----

def _judge_presence(history: History, verdict: Verdict) -> None:
    ghosts: set[tuple[str, str]] = set()
    missing: set[tuple[str, str]] = set()
    for answer in history.who:
        expected = {user for user, room in history.present.items() if room == answer.room}
        listed = set(answer.nicks)
        ghosts |= {(answer.node, nick) for nick in listed - expected}
        missing |= {(answer.node, nick) for nick in expected - listed}
    verdict.ghosts, verdict.missing = len(ghosts), len(missing)
    for node, nick in sorted(ghosts):
        verdict.example("ghosts", {"node": node, "nick": nick})
    for node, nick in sorted(missing):
        verdict.example("missing", {"node": node, "nick": nick})


# ---- a record written by ``chaos.py --json``, judged again ----

def history_from_record(record: dict) -> History:
    """The History in a record's ``history`` (chaos.history_record's shape)."""
    raw = record["history"]
    return History(
        sent=[Sent(p, s, q, at, node=n, room=room, to=to) for p, s, q, at, n, room, to
              in raw["sent"]],
        receipts=[Receipt(u, s, p, at, node=n, replay=r) for u, s, p, at, n, r
                  in raw["receipts"]],
        stays=[Stay(*stay) for stay in raw["stays"]],
        entered=[tuple(seen) for seen in raw.get("entered", ())],
        sessions=[Session(*session) for session in raw["sessions"]],
        kills=[tuple(kill) for kill in raw["kills"]],
        who=[WhoAnswer(a, n, room, tuple(nicks)) for a, n, room, nicks in raw["who"]],
        present=raw["present"])


def main(argv: list[str] | None = None) -> int:
    """``python bench/chaos_check.py RECORD.json``: judge a run's record
    again and print every failure (the run itself keeps only a few)."""
    import json
    import sys
    path = (argv if argv is not None else sys.argv[1:])[0]
    verdict = Verdict()
    history = history_from_record(json.loads(open(path).read()))
    verdict.example = lambda figure, what: print(figure, what)  # every one, as found
    verdict = _check_into(history, verdict)
    print({k: v for k, v in verdict.as_dict().items() if k != "examples"})
    return 0 if verdict.clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
