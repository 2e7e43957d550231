"""Moderation: who may come in and who may act on others.

Owns the server's password and the operators' (from :class:`Access`), the
wrong guesses at each (counted apart, per address: five wrong ``/op``
guesses do not lock the address out of logging in), and the bans (address
key -> until when, and why), kept in the store (a single server's database)
too.  Bans are given and taken as durations, never as another clock's time.
No I/O of its own.
"""

from __future__ import annotations

import hmac
from collections import deque
from dataclasses import dataclass

from termchat.core.ports import NO_STORE, Store
from termchat.wire.protocol import Code

WRONG_PASSWORDS = 5           # per address and password...
WRONG_PASSWORD_WINDOW = 60.0  # ...in this many seconds, then refused for a while
GUESSERS_KEPT = 10_000        # addresses whose wrong guesses are remembered at once
SERVER, OPERATOR = "server", "operator"


@dataclass(frozen=True)
class Access:
    """Who may come in and who may moderate: the server password (hello
    must carry it), the operators' password, the message of the day."""
    server_password: str | None = None
    op_password: str | None = None
    motd: tuple[str, ...] = ()


@dataclass(frozen=True)
class Ban:
    until: float   # on this node's clock
    reason: str

    def minutes_left(self, now: float) -> int:
        return max(1, round((self.until - now) / 60))

    def refusal(self, now: float) -> tuple[str, str]:
        """What a banned address is told, and the code."""
        return (f"you are banned from this server for {self.minutes_left(now)} more minutes"
                + (f" ({self.reason})" if self.reason else ""), Code.BANNED)


class Moderation:
    """Passwords, wrong guesses and bans."""

    def __init__(self, access: Access, store: Store = NO_STORE) -> None:
        self.access = access
        self.store = store
        self.bans: dict[str, Ban] = {}
        self.wrong: dict[tuple[str, str], deque[float]] = {}  # (password, address) -> when

    # ---- passwords ----

    def refusal(self, which: str, address: str, given: str | None,
                now: float) -> tuple[str, str] | None:
        """Why a password is refused, and the code (None: accepted, or none
        is needed).  Compared in constant time; an address that keeps
        guessing wrong is refused for a while without being checked."""
        expected = self.access.server_password if which == SERVER else self.access.op_password
        if expected is None:
            return None
        failures = self.wrong.get((which, address))
        if failures is not None:
            while failures and failures[0] < now - WRONG_PASSWORD_WINDOW:
                failures.popleft()
            if len(failures) >= WRONG_PASSWORDS:
                return "too many wrong passwords; try again in a minute", Code.WRONG_PASSWORD
        if given is None:
            return f"this server needs a {which} password", Code.NEEDS_PASSWORD
        if hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
            return None
        self.remember_wrong(which, address, now)
        return f"wrong {which} password", Code.WRONG_PASSWORD

    def remember_wrong(self, which: str, address: str, now: float) -> None:
        if len(self.wrong) >= GUESSERS_KEPT:
            stale = [key for key, when in self.wrong.items()
                     if not when or when[-1] < now - WRONG_PASSWORD_WINDOW]
            for key in stale or list(self.wrong)[:len(self.wrong) // 2]:
                del self.wrong[key]
        self.wrong.setdefault((which, address), deque()).append(now)

    # ---- bans ----

    def ban(self, address: str, seconds: float, reason: str, now: float) -> Ban:
        ban = self.bans[address] = Ban(now + seconds, reason)
        self.store.ban(address, seconds, reason)
        return ban

    def banned(self, address: str | None, now: float) -> Ban | None:
        ban = self.bans.get(address or "")
        if ban is not None and ban.until <= now:
            self.lift(address)
            return None
        return ban

    def lift(self, address: str) -> None:
        del self.bans[address]
        self.store.unban(address)

    def live_bans(self, now: float) -> list[tuple[str, Ban]]:
        for address in [a for a, ban in self.bans.items() if ban.until <= now]:
            self.lift(address)
        return sorted(self.bans.items(), key=lambda pair: (pair[1].until, pair[0]))
