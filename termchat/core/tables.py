"""The dispatch tables: one handler per message class a client may send,
one per event class the cluster may hand over.  Handlers register with
``@handles(MessageClass)`` (commands.py, worldplay.py) and
``@applies(EventClass)`` (clusterview.py); :func:`check_tables`, run when
the core is imported, makes a missing handler an ImportError."""

from __future__ import annotations

from typing import Callable

PACKET_HANDLERS: dict[type, Callable] = {}
CLUSTER_HANDLERS: dict[type, Callable] = {}


def handles(message_class: type, table: dict = PACKET_HANDLERS):
    def register(function: Callable) -> Callable:
        if message_class in table:
            raise TypeError(f"two handlers for {message_class.__name__}")
        table[message_class] = function
        return function
    return register


def applies(event_class: type):
    return handles(event_class, CLUSTER_HANDLERS)


def check_tables(client_messages, cluster_events) -> None:
    """Every message a client may send and every event the cluster may hand
    over has exactly one handler."""
    for what, table, registry in (("client message", PACKET_HANDLERS, client_messages),
                                  ("cluster event", CLUSTER_HANDLERS, cluster_events)):
        missing = sorted(cls.__name__ for cls in set(registry) - set(table))
        if missing:
            raise ImportError(f"the core has no handler for {what}(s): {', '.join(missing)}")
