"""termchat's internals, by layer (each depends only on those above it):

- ``wire``: the protocol (framing, messages, names), with no I/O;
- ``world``: world mode's model, with no I/O;
- ``cluster.events``: what cluster nodes say to each other, with no I/O;
- ``core``: the chat's rules, sans-IO: events in, effects out;
- ``cluster.link``: the Redis link of a cluster node (two threads);
- ``ui``: what both terminal backends share, with no packets in it.

The programs are the top-level modules: ``chat_server.py`` (the selector
loop), ``chat_client.py``, and the UI backends ``chatui.py`` and
``chatuicurses.py`` behind ``ui_backend.py``.
"""
