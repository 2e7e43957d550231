"""The one interface the client uses to reach a terminal UI.

``load(name)`` returns a backend by name, chosen at run time.  Every backend
module exposes the same functions: ``init_windows(color=True)``,
``read_command(prompt, complete=None)``, ``print_message(msg)``,
``end_windows()`` and ``stop_input()``.  Adding a backend means adding its
module and one line to BACKENDS.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BACKENDS = {
    "curses": "chatuicurses",
    "ansi": "chatui",
}
DEFAULT = "curses"
FUNCTIONS = ("init_windows", "read_command", "print_message", "end_windows", "stop_input")


class BackendUnavailable(RuntimeError):
    """The chosen backend cannot run on this machine or terminal."""


def load(name: str = DEFAULT) -> ModuleType:
    """Import the backend called ``name`` and check it has the interface."""
    if name not in BACKENDS:
        raise ValueError(f"unknown UI {name!r}; choose from {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[name])
    except Exception as exc:
        raise BackendUnavailable(f"the {name} UI cannot be loaded: {exc}") from exc
    missing = [f for f in FUNCTIONS if not callable(getattr(module, f, None))]
    if missing:
        raise BackendUnavailable(f"the {name} UI lacks {', '.join(missing)}")
    return module


def start(module: ModuleType, color: bool = True) -> None:
    """init_windows(), turning the backend's start-up failures into
    BackendUnavailable with a hint."""
    try:
        module.init_windows(color=color)
    except Exception as exc:
        try:
            module.end_windows()
        except Exception:
            pass
        hint = " (try --ui ansi)" if module.__name__ == BACKENDS["curses"] else ""
        raise BackendUnavailable(f"cannot start the terminal UI: {exc}{hint}") from exc
