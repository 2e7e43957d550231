"""The reference model of the chat, in plain Python, for the stateful
property tests (tests/core/test_model.py): who is connected where, who is in
which room, who holds which nick, which sessions are alive, what each
person was entitled to and what each has been shown.

It knows nothing of the core: it is told what the users do (as the test
drives the core), decides what the chat's rules say must follow, and is
asked afterwards what should be true.  One :class:`Person` is one user
for as long as it is in the chat, whatever its nick, across its
connections (a session's resumes); one :class:`Client` is one connection.
One :class:`Said` is one chat, emote or DM, told apart by its text (each
is unique), with the people it was for when it was said.

The documented limits are rules here, not exceptions: a node killed (or
Redis emptied, or its last entries lost) before what its users said was
in the stream loses that for everyone else (README, "When the network
drops"); such a message is marked ``lost_after`` its node: whoever had
not yet received it may never, and nobody may receive it twice.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from termchat.wire.names import name_key

GRACE = 60.0
HELLO_TIMEOUT = 10.0
HISTORY = 3
WRONG_PASSWORDS = 5
WRONG_WINDOW = 60.0


@dataclass(eq=False)
class Said:
    """One chat, emote or DM, as the model saw it said."""
    text: str
    kind: str                 # chat, emote, dm
    sender: "Person"
    room: str | None          # the room key (chat, emote)
    audience: frozenset       # the pids it was for when it was said
    order: int                # the model's order of everything said
    node: str = "solo"        # where it was said
    may_be_lost: bool = False  # a documented limit took it (see the module docstring)
    forgotten: bool = False   # Redis lost it: a node started since may not know it
    unwritten: bool = False   # said on a node paused before it was written: for the
    # others' users it is said when the node runs again (its audience grows then)


@dataclass(eq=False)
class Person:
    """One user for as long as it is in the chat."""
    pid: int
    nick: str
    host: str
    node: str
    session: str | None = None          # its token
    room: str = "lobby"
    client: "Client | None" = None      # attached to, if connected
    grace_until: float | None = None    # detached: when its grace ends
    orphan_until: float | None = None   # its node taken for dead: the others' grace
    operators: set = field(default_factory=set)   # the nodes it became an operator on
    away: str | None = None
    gone: bool = False
    entitled: list = field(default_factory=list)  # Said it is owed, in the model's order
    view: list = field(default_factory=list)      # (Said, id) shown to it, in order
    ids: list = field(default_factory=list)       # every id it was shown, in order
    first_id: str | None = None                   # its own join's id (a session's start)

    @property
    def key(self) -> str:
        return name_key(self.nick)

    @property
    def operator(self) -> bool:
        """A node's operators are its own (the node keeps it while the
        session lives, wherever it is taken up meanwhile)."""
        return self.node in self.operators

    @property
    def detached(self) -> bool:
        return self.client is None and not self.gone

    @property
    def last_id(self) -> str | None:
        return self.ids[-1] if self.ids else None


@dataclass(eq=False)
class Client:
    """One connection."""
    cid: int
    outlet: object
    host: str
    node: str
    opened: float
    state: str = "greeting"           # greeting, joined, closed
    person: Person | None = None
    resumes: int = 0
    deadline: float = 0.0             # its hello deadline


class World:
    """Everything the model knows."""

    def __init__(self) -> None:
        self.now = 0.0
        self.people: list[Person] = []        # everyone ever, gone ones too
        self.clients: list[Client] = []       # every connection ever
        self.said: dict[str, Said] = {}       # by text
        self.order = itertools.count()
        self.pids = itertools.count(1)
        self.cids = itertools.count(1)
        self.texts = itertools.count(1)
        self.banned: dict[str, float] = {}    # host -> until
        self.seen_ids: dict[str, int] = {}    # every id shown to anyone, in the order seen
        self.wrong: dict[tuple, list[float]] = {}  # (which, host, node) -> times

    # ---- who is here ----

    def present(self) -> list[Person]:
        """Connected, or inside its grace."""
        return [p for p in self.people if not p.gone]

    def holder(self, nick: str) -> Person | None:
        key = name_key(nick)
        return next((p for p in self.present() if p.key == key), None)

    def in_room(self, room: str) -> list[Person]:
        return [p for p in self.present() if p.room == room]

    def open_clients(self, node: str | None = None) -> list[Client]:
        return [c for c in self.clients if c.state != "closed"
                and (node is None or c.node == node)]

    def greeting(self, node: str | None = None) -> list[Client]:
        return [c for c in self.open_clients(node) if c.state == "greeting"]

    def joined(self, node: str | None = None) -> list[Client]:
        return [c for c in self.open_clients(node) if c.state == "joined"]

    def is_banned(self, host: str) -> bool:
        until = self.banned.get(host)
        return until is not None and until > self.now

    # ---- passwords (the server's rule: five wrong a minute, then refused) ----

    def password_refusal(self, which: str, client: "Client", given: str | None,
                         right: str) -> str | None:
        """The code of the refusal, or None (wrong guesses are counted per
        address by each node)."""
        key = (which, client.host, client.node)
        times = [t for t in self.wrong.get(key, []) if t >= self.now - WRONG_WINDOW]
        self.wrong[key] = times
        if len(times) >= WRONG_PASSWORDS:
            return "wrong-password"
        if given is None:
            return "needs-password"
        if given != right:
            times.append(self.now)
            return "wrong-password"
        return None

    # ---- arriving and leaving ----

    def connect(self, outlet, host: str, node: str = "solo") -> Client:
        client = Client(next(self.cids), outlet, host, node, self.now,
                        deadline=self.now + HELLO_TIMEOUT)
        self.clients.append(client)
        return client

    def join(self, client: Client, nick: str, session: str | None) -> Person:
        person = Person(next(self.pids), nick, client.host, client.node, session)
        self.people.append(person)
        self.attach(client, person)
        return person

    def attach(self, client: Client, person: Person) -> None:
        client.state, client.person = "joined", person
        person.client, person.grace_until = client, None
        person.host, person.node = client.host, client.node

    def close(self, client: Client) -> None:
        client.state = "closed"

    def leave(self, person: Person) -> None:
        """Gone from the chat: its session (if any) is over."""
        if person.client is not None:
            person.client.state = "closed"
        person.client, person.gone, person.grace_until = None, True, None
        person.orphan_until = None

    def detach(self, person: Person) -> None:
        person.client.state = "closed"
        person.client = None
        person.grace_until = self.now + GRACE

    def graces_over(self) -> list[Person]:
        return [p for p in self.present()
                if p.detached and p.grace_until is not None and p.grace_until <= self.now]

    def session_of(self, token: str) -> Person | None:
        """The live person a token resumes, if any."""
        return next((p for p in self.present() if p.session == token), None)

    # ---- talking ----

    def text(self) -> str:
        return f"m{next(self.texts)}"

    def say(self, sender: Person, kind: str, text: str) -> Said:
        """A chat or emote in the sender's room: for everyone in it then."""
        audience = frozenset(p.pid for p in self.in_room(sender.room))
        return self.record(Said(text, kind, sender, sender.room, audience, next(self.order),
                                sender.node))

    def direct(self, sender: Person, target: Person, text: str) -> Said:
        audience = frozenset({sender.pid, target.pid})
        return self.record(Said(text, "dm", sender, None, audience, next(self.order),
                                sender.node))

    def record(self, said: Said) -> Said:
        self.said[said.text] = said
        for person in self.present():
            if person.pid in said.audience:
                person.entitled.append(said)
        return said

    def say_unwritten(self, sender: Person, kind: str, text: str) -> Said:
        """Said on a node that is paused before it writes it: for its own
        users now, for the others' when it runs again (:meth:`written`)."""
        audience = frozenset(p.pid for p in self.in_room(sender.room) if p.node == sender.node)
        return self.record(Said(text, kind, sender, sender.room, audience, next(self.order),
                                sender.node, unwritten=True))

    def written(self, said: Said, readers: list[Person]) -> None:
        """An unwritten message reaches the stream: it is for ``readers`` too
        (those of the others' users in its room then)."""
        said.audience = said.audience | {p.pid for p in readers}
        for person in readers:
            person.entitled.append(said)


def owed(person: Person) -> list[Said]:
    """What the person is owed and may still be shown (a message lost by a
    documented limit is owed only if it was shown already)."""
    shown = {said.text for said, _ in person.view}
    return [s for s in person.entitled if not s.may_be_lost or s.text in shown]


def in_senders_order(view: list[Said], entitled: list[Said]) -> bool:
    """Each sender's messages in ``view`` come in the order they were said
    (a cluster keeps each sender's order, not one order for all)."""
    last: dict[int, int] = {}
    for said in view:
        if said.order < last.get(said.sender.pid, -1):
            return False
        last[said.sender.pid] = said.order
    return True
