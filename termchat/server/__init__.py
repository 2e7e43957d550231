"""The server's transport pieces that chat_server.py's loop uses."""
