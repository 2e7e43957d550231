"""The one interface the client uses to reach a terminal UI.

``load(name)`` returns a backend by name, chosen at run time; ``check``
tells whether it can run on this terminal before anything is sent or
drawn.  Every backend module exposes the same functions: ``init_windows(color=True)``,
``read_command(prompt, complete=None, at_top=None)``, ``print_message(msg)``,
``end_windows()``, plus ``stop_input()``, ``bell()``, ``print_older(msgs)``
(lines to go above everything shown) and ``check_terminal()``.
Adding a backend means adding its module and one line to BACKENDS.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = {
    "curses": "chatuicurses",
    "ansi": "chatui",
}
DEFAULT = "curses"
FALLBACK = "ansi"  # needs nothing but a terminal: suggested when another fails
FUNCTIONS = ("init_windows", "read_command", "print_message", "end_windows", "stop_input",
             "bell", "print_older", "check_terminal")


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run on this machine or terminal."""


def load(name: str = DEFAULT) -> ModuleType:
    """Import the backend called ``name`` and check it has the interface."""
    if name not in BACKENDS:
        raise ValueError(f"unknown UI {name!r}; choose from {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[name])
    except Exception as exc:
        raise unavailable(name, f"the {name} UI cannot be loaded: {exc}") from exc
    missing = [f for f in FUNCTIONS if not callable(getattr(module, f, None))]
    if missing:
        raise unavailable(name, f"the {name} UI lacks {', '.join(missing)}")
    return module


def check(module: ModuleType) -> None:
    """Can the backend run on this terminal?  BackendUnavailable with one
    accurate line if not (suggesting the ANSI UI only where it would help).
    Writes nothing to the terminal."""
    try:
        module.check_terminal()
    except Exception as exc:
        name = next(n for n, m in BACKENDS.items() if m == module.__name__)
        if getattr(exc, "other_ui_may_work", False):
            raise unavailable(name, f"cannot start the terminal UI: {exc}") from exc
        raise BackendUnavailable(f"cannot start the terminal UI: {exc}") from exc


def start(module: ModuleType, color: bool = True) -> None:
    """init_windows(), turning the backend's start-up failures into
    BackendUnavailable with a hint (a backend undoes its own half-done set-up)."""
    try:
        module.init_windows(color=color)
    except Exception as exc:
        name = next(n for n, m in BACKENDS.items() if m == module.__name__)
        raise unavailable(name, f"cannot start the terminal UI: {exc}") from exc


def unavailable(name: str, message: str) -> BackendUnavailable:
    hint = f" (try --ui {FALLBACK})" if name != FALLBACK else ""
    return BackendUnavailable(message + hint)
