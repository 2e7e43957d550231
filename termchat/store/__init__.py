"""Durable state for a single server (``--db FILE``): sqlite.py owns the
database and every line of SQL; the core reaches it only through the Store
port (termchat.core.ports)."""
