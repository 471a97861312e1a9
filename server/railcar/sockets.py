"""Listening sockets, owned by the master for its whole life and inherited by every worker.

Runs in the master. Sockets are never closed across restarts, so connections queued in the
backlog while workers change hands are accepted by whichever worker is serving.
"""

from __future__ import annotations

import errno
import os
import socket
import stat

BACKLOG = 2048


class BindError(Exception):
    pass


def _remove_stale_unix_socket(path: str) -> None:
    """Remove a socket file left by a dead server; refuse if a live one answers on it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise BindError(f"unix:{path}: exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)
    else:
        raise BindError(f"unix:{path}: another server is listening there")
    finally:
        probe.close()


def bind(address: str, unix_mode: int = 0o660,
         owner: tuple[int, int] = (-1, -1)) -> socket.socket:
    """Bind and listen on `HOST:PORT`, `[V6]:PORT` or `unix:PATH`.

    A unix socket gets `unix_mode` and `owner` (uid, gid; -1 keeps ours): connecting needs
    write permission, so mode 0660 with the web server's group admits it and no one else.
    The mode comes from the umask at bind time and the owner from lchown, so nothing follows
    a symlink someone could swap in for the socket meanwhile.
    """
    try:
        if address.startswith("unix:"):
            path = address[len("unix:"):]
            _remove_stale_unix_socket(path)
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o777 & ~unix_mode)
            try:
                sock.bind(path)
            finally:
                os.umask(old_umask)
            if owner != (-1, -1):
                os.lchown(path, *owner)
        else:
            host, _, port = address.rpartition(":")
            host = host.strip("[]") or "0.0.0.0"
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, int(port)))
        sock.listen(BACKLOG)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise BindError(f"cannot listen on {address}: {reason}") from None
    return sock


def close(address: str, sock: socket.socket) -> None:
    sock.close()
    if address.startswith("unix:"):
        try:
            os.unlink(address[len("unix:"):])
        except OSError:
            pass
