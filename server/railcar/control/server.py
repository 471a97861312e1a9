"""Serve the admin socket in the master: accept, read one request, run its handler, reply.

Runs in the master (gevent); each client gets its own greenlet, so a blocking `restart`
does not hold up `status`. A request line is at most REQUEST_MAX_LINE bytes and must arrive
within REQUEST_DEADLINE seconds of connecting.
"""

from __future__ import annotations

import os
import socket
import traceback

import gevent
from gevent.server import StreamServer

from .. import rundir
from ..channel import Channel, ChannelClosed
from . import handlers, protocol

REQUEST_DEADLINE = 10.0
REQUEST_MAX_LINE = 64 * 1024


class ControlServer:
    """`group` (a gid, the admin_group setting): members may use the socket too (mode 0660,
    the directory made traversable for them); otherwise only the master's account (0600)."""

    def __init__(self, path: str, master, log, group: int | None = None):
        self.path = path
        self.group = group
        self.master = master
        self.log = log
        self.server: StreamServer | None = None

    def start(self) -> None:
        """Bind the socket with mode 0600 (0660 and our group with `group`) in a verified
        directory (rundir); refuse to take over a live master's socket."""
        directory = os.path.dirname(self.path)
        rundir.ensure(directory, mode=0o700)
        if self.group is not None:
            rundir.open_to_group(directory, self.group)
        if os.path.exists(self.path):
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(self.path)
            except OSError:
                os.unlink(self.path)
            else:
                raise RuntimeError(f"another railcar master is running on {self.path}")
            finally:
                probe.close()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(self.path)
        except OSError as exc:
            listener.close()
            raise RuntimeError(f"cannot create the admin socket {self.path}: "
                               f"{exc.strerror}") from None
        finally:
            os.umask(old_umask)
        if self.group is None:
            os.chmod(self.path, 0o600)
        else:
            try:
                os.chown(self.path, -1, self.group)
            except OSError as exc:
                listener.close()
                os.unlink(self.path)
                raise rundir.RuntimeDirError(
                    f"cannot give the admin socket {self.path} to admin_group (gid "
                    f"{self.group}): {exc.strerror} (the account running railcar must be a "
                    "member of that group)") from None
            os.chmod(self.path, 0o660)
        listener.listen(64)
        self.server = StreamServer(listener, self.handle)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def handle(self, sock, address) -> None:
        channel = Channel(sock, max_line=REQUEST_MAX_LINE)
        try:
            # A client that connects and sends nothing (or a byte now and then) does not keep
            # a greenlet of the master forever; commands themselves may take long (restart).
            with gevent.Timeout(REQUEST_DEADLINE, ChannelClosed("no request in time")):
                request = channel.receive()
            command = request.get("command")
            handler = getattr(handlers, "do_" + str(command), None)
            if command not in protocol.COMMANDS or handler is None:
                channel.send(protocol.failure(f"unknown command {command!r}"))
                return
            progress = lambda text: channel.send({"event": "progress", "message": text})
            channel.send(handler(self.master, progress=progress, **request.get("args", {})))
        except (ChannelClosed, ValueError, OSError):
            pass
        except Exception:
            self.log.error("admin command failed:\n%s", traceback.format_exc())
            try:
                channel.send(protocol.failure("internal error", traceback.format_exc()))
            except OSError:
                pass
        finally:
            channel.close()
