"""Newline-delimited JSON messages over a stream socket.

Used for both the master<->worker channel (a socketpair) and the admin socket. One message
is one JSON object on one line (UTF-8, no embedded newlines: json.dumps never writes any).
Works on plain sockets (the CLI client) and gevent sockets (master, worker) alike.
"""

from __future__ import annotations

import json
import socket
from typing import Iterator

MAX_LINE = 16 * 1024 * 1024


class ChannelClosed(Exception):
    pass


class Channel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buffer = bytearray()

    def send(self, message: dict) -> None:
        self.sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def receive(self) -> dict:
        """The next message; raises ChannelClosed at end of stream."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[:end + 1]
                return json.loads(line)
            if len(self.buffer) > MAX_LINE:
                raise ChannelClosed("message too long")
            try:
                chunk = self.sock.recv(65536)
            except OSError as exc:
                raise ChannelClosed(str(exc)) from None
            if not chunk:
                raise ChannelClosed("end of stream")
            self.buffer += chunk

    def messages(self) -> Iterator[dict]:
        """Every message until the peer closes the channel."""
        while True:
            try:
                yield self.receive()
            except (ChannelClosed, ValueError):
                return

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
