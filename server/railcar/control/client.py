"""Talk to a running master over its admin socket (used by the CLI; plain blocking sockets)."""

from __future__ import annotations

import socket
from typing import Callable

from ..channel import BadMessage, Channel, ChannelClosed
from . import protocol

REPLY_MAX_LINE = 256 * 1024 * 1024


class ControlError(Exception):
    """The master could not be reached, or answered with a failure."""

    def __init__(self, message: str, detail: str | None = None, result: dict | None = None):
        super().__init__(message)
        self.detail = detail
        self.result = result


def call(path: str, command: str, on_progress: Callable[[str], None] | None = None,
         timeout: float | None = None, **args) -> dict:
    """Send one command; return its result dict or raise ControlError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except FileNotFoundError:
        raise ControlError(f"no railcar master: {path} does not exist "
                           "(is it running? give --admin-socket)") from None
    except OSError as exc:
        raise ControlError(f"cannot reach the railcar master at {path}: {exc.strerror}") from None
    # The master is trusted; its replies (backtraces of every worker) may be long.
    channel = Channel(sock, max_line=REPLY_MAX_LINE)
    try:
        channel.send(protocol.request(command, **args))
        while True:
            message = channel.receive()
            if message.get("event") == "progress":
                if on_progress:
                    on_progress(message.get("message", ""))
                continue
            if message.get("ok"):
                return message.get("result", {})
            raise ControlError(message.get("error", "failed"), message.get("detail"),
                               message.get("result"))
    except (ChannelClosed, socket.timeout) as exc:
        raise ControlError(f"the master closed the admin connection ({exc})") from None
    except BadMessage as exc:
        raise ControlError(f"the master's reply was unreadable: {exc}") from None
    finally:
        channel.close()
