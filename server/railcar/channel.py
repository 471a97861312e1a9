"""Newline-delimited JSON messages over a stream socket.

Used for both the master<->worker channel (a socketpair) and the admin socket. One message
is one JSON object on one line (UTF-8, no embedded newlines: json.dumps never writes any).
Works on plain sockets (the CLI client) and gevent sockets (master, worker) alike.

A peer may be hostile (a worker runs app code): what arrives is bounded and checked before
anyone looks at it. A line longer than `max_line` is discarded as it arrives (never buffered
whole); a line that is not JSON, not an object, or nested deeper than MAX_DEPTH raises
BadMessage once it is consumed, and the channel goes on with the next line. Whether an object
has the right fields is the reader's business (railcar.replies in the master).

File descriptors can travel with a message (SCM_RIGHTS, for smart spawning): the sender
attaches them to the message's bytes and names their count in the message (`"fds": N`); a
channel made with `max_fds` collects what arrives and `take_fds(N)` hands them out in order.
"""

from __future__ import annotations

import json
import socket
from typing import Callable, Iterator

MAX_LINE = 4 * 1024 * 1024     # worker replies (backtraces, requests) stay far below it
MAX_DEPTH = 16                 # railcar's own messages nest 6 levels at most


class ChannelClosed(Exception):
    pass


class BadMessage(ValueError):
    """A message that was consumed and dropped: the channel itself is still usable."""


class Channel:
    def __init__(self, sock: socket.socket, max_fds: int = 0, max_line: int = MAX_LINE):
        self.sock = sock
        self.buffer = bytearray()
        self.max_fds = max_fds          # > 0: accept descriptors passed with messages
        self.max_line = max_line
        self.discarding = 0             # > 0: bytes dropped so far of an over-long line
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
        """The next message; raises ChannelClosed at end of stream, BadMessage for a line
        that is not a JSON object within the limits (consumed: call again for the next)."""
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[:end + 1]
                if self.discarding or len(line) > self.max_line:
                    dropped, self.discarding = self.discarding + len(line), 0
                    raise BadMessage(f"a message of {dropped} bytes, over the limit of "
                                     f"{self.max_line}")
                return decode(line)
            if len(self.buffer) > self.max_line:
                self.discarding += len(self.buffer)
                self.buffer.clear()
            self.buffer += self._recv()

    def _recv(self) -> bytes:
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
        return chunk

    def messages(self, on_bad: Callable[[BadMessage], None] | None = None) -> Iterator[dict]:
        """Every message until the peer closes the channel; a bad one is passed to `on_bad`
        (if given) and skipped."""
        while True:
            try:
                yield self.receive()
            except BadMessage as exc:
                if on_bad is not None:
                    on_bad(exc)
            except ChannelClosed:
                return

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def decode(line: bytes) -> dict:
    """One line as a JSON object; BadMessage if it is not one, or nests too deep."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise BadMessage(f"not JSON ({str(exc)[:80]})") from None
    if not isinstance(message, dict):
        raise BadMessage(f"not a JSON object but {type(message).__name__}")
    if not _within_depth(message, MAX_DEPTH):
        raise BadMessage(f"nested deeper than {MAX_DEPTH} levels")
    return message


def _within_depth(value, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return True
