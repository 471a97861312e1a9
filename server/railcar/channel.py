"""Newline-delimited JSON messages over a stream socket.

Used for both the master<->worker channel (a socketpair) and the admin socket. One message
is one JSON object on one line (UTF-8, no embedded newlines: json.dumps never writes any).
Works on plain sockets (the CLI client) and gevent sockets (master, worker) alike.

File descriptors can travel with a message (SCM_RIGHTS, for smart spawning): the sender
attaches them to the message's bytes and names their count in the message (`"fds": N`); a
channel made with `max_fds` collects what arrives and `take_fds(N)` hands them out in order.
"""

from __future__ import annotations

import json
import socket
from typing import Iterator

MAX_LINE = 16 * 1024 * 1024


class ChannelClosed(Exception):
    pass


class Channel:
    def __init__(self, sock: socket.socket, max_fds: int = 0):
        self.sock = sock
        self.buffer = bytearray()
        self.max_fds = max_fds          # > 0: accept descriptors passed with messages
        self.fds: list[int] = []

    def send(self, message: dict, fds: list[int] = ()) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        if fds:
            data = data[socket.send_fds(self.sock, [data], list(fds)):]
        if data:
            self.sock.sendall(data)

    def take_fds(self, count: int) -> list[int]:
        """The next `count` descriptors received; raises ChannelClosed if fewer arrived."""
        if count > len(self.fds):
            raise ChannelClosed(f"expected {count} file descriptors, got {len(self.fds)}")
        taken, self.fds = self.fds[:count], self.fds[count:]
        return taken

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
                if self.max_fds:
                    chunk, fds, _flags, _addr = socket.recv_fds(self.sock, 65536, self.max_fds)
                    self.fds.extend(fds)
                else:
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
