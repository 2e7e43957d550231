"""The terminal client's logic, with no socket, thread or terminal in it.

- ``session``: the connection and session state (phase, token, last id,
  reconnecting with backoff, what each refusal code does);
- ``view``: what the client knows of the chat (nick, room, nicks, ignore
  list, the place in world mode), bounded;
- ``commands``: the command table and the layout of /help;
- ``formatting``: the wording and styling of each line shown;
- ``effects``: what the logic asks the program to do;
- ``core``: the facade the program feeds (lines typed, payloads, time).

``chat_client.py`` owns the socket, the threads and the terminal UI.
"""
