"""Start a master: daemonize if asked, patch with gevent, bind, run, report the first boot.

Runs in the `railcar start` process. With --daemon the foreground process forks, and waits on
a pipe for the master to report whether its apps booted, so the command's output and exit
status tell the user the outcome (the master keeps running and retrying either way).
Under systemd (Type=notify, $NOTIFY_SOCKET set) the same report becomes READY=1 and a STATUS=
line: ready means every app has booted or failed to, so one broken app cannot hold up (or get
killed along with) the others.

`railcar start` (railcar.cli) hands over to a fresh interpreter before launching
(`exec_master`): the master runs for months, and the CLI's libraries (click and what it
brings, the start options), about 1.5 MB, would stay in it for nothing.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time

from . import rundir
from .config import ServerConfig

READY_POLL = 0.1


def _daemonize(config: ServerConfig) -> int | None:
    """Fork twice. In the original process: wait for the report, print it, return the exit
    status. In the daemon: return None and go on."""
    read_fd, write_fd = os.pipe()
    if os.fork():
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            report = pipe.read().decode("utf-8", "replace")
        status, _, text = report.partition("\n")
        sys.stdout.write(text)
        return 0 if status == "ok" else 1
    os.close(read_fd)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    os.environ["RAILCAR_REPORT_FD"] = str(write_fd)
    return None


def _report(text: str, ok: bool) -> None:
    fd = os.environ.pop("RAILCAR_REPORT_FD", None)
    if fd is None:
        return
    try:
        os.write(int(fd), (("ok" if ok else "error") + "\n" + text).encode())
    finally:
        os.close(int(fd))


def notify_systemd(address: str | None, *lines: str) -> None:
    """sd_notify(3): send `lines` to systemd's notify socket; a no-op without one."""
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]     # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto("\n".join(lines).encode(), address)
        except OSError:
            pass    # systemd went away; nothing to tell


def _report_first_boot(master, notify_socket: str | None = None) -> None:
    """Once each app has all its workers ready, or has failed to boot: report (daemon mode)."""
    import gevent

    from .supervision import SYSTEMD_MARGIN

    longest = max(app.ready_timeout for app in master.config.apps)
    # A unit's TimeoutStartSec= comes from the settings it was rendered with (the deploy's:
    # the defaults); ask systemd for what ours need (systemd 236 and later).
    notify_systemd(notify_socket, "EXTEND_TIMEOUT_USEC=%d" % (
        (longest + SYSTEMD_MARGIN) * 1_000_000))
    limit = time.monotonic() + longest + 10
    while time.monotonic() < limit:
        views = [p.snapshot() for p in master.pools]
        pending = [v for v in views
                   if len(v.serving) < v.min_workers and not v.error or v.booting]
        if not pending:
            break
        gevent.sleep(READY_POLL)
    views = [p.snapshot() for p in master.pools]
    failed = [v for v in views if v.error and not v.release]
    lines = [f"railcar master {master.pid} started; admin socket {master.config.admin_socket}"]
    if master.config.log_file:
        lines.append(f"log: {master.config.log_file}")
    for view in views:
        if any(view is v for v in failed):
            lines.append(f"{view.name}: FAILED to boot (retrying):\n{view.error}")
        else:
            lines.append(f"{view.name}: serving on {' '.join(view.binds)}")
    _report("\n".join(lines) + "\n", ok=not failed)
    summary = ("apps failed to boot: " + ", ".join(v.name for v in failed) if failed
               else f"serving {len(master.pools)} app(s)")
    notify_systemd(notify_socket, "READY=1", f"STATUS={summary}", f"MAINPID={master.pid}")


def exec_master(values: dict, app_dir: str | None, args: list[str]) -> None:
    """Go on as the master in a new interpreter of this same process (exec: same pid, open
    files, environment and working directory), without the CLI's modules. `values` (the
    parsed `start` options) and `app_dir` go over an anonymous memory file, never on a
    command line or in the environment (they may hold secrets); the new interpreter loads
    the config from them again and launches (`main`). `args`: the command's arguments, for
    the master's process title. Returns only if the exec cannot be done: the caller then
    launches in this process."""
    try:
        payload = json.dumps({"values": values, "app_dir": app_dir, "args": args}).encode()
        fd = os.memfd_create("railcar-start", 0)
    except (AttributeError, TypeError, ValueError, OSError):
        return
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        os.set_inheritable(fd, True)
        sys.stdout.flush()
        sys.stderr.flush()
        # -P: the working directory is not put on sys.path (the master may run as root).
        os.execv(sys.executable, [sys.executable, "-P", "-m", __name__, str(fd), *args])
    except OSError:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    """The master's interpreter after exec_master: ARGV is the memory file's descriptor and
    the command's arguments."""
    from .config import load
    from .settings import ConfigError

    argv = sys.argv[1:] if argv is None else argv
    with os.fdopen(int(argv[0]), "rb") as handle:
        start = json.loads(handle.read())
    try:
        config = load(start["values"], start["app_dir"])
    except ConfigError as exc:     # the files changed since the command checked them
        sys.stderr.write(f"Error: {exc}\n")
        return 1
    return launch(config, start["args"])


def launch(config: ServerConfig, args: list[str] | None = None) -> int:
    """Run the master in this process until it stops; returns the exit status. `args`: the
    command's arguments for the process title (default: sys.argv[1:])."""
    if config.daemon:
        if not config.log_file:
            config.log_file = os.path.join(os.path.dirname(config.admin_socket), "railcar.log")
            try:
                rundir.ensure(os.path.dirname(config.log_file), mode=0o700)
            except rundir.RuntimeDirError as exc:
                sys.stderr.write(f"railcar: {exc}\n")
                return 1
        status = _daemonize(config)
        if status is not None:
            return status

    # Ours alone: workers must not inherit it (they would pose as the main process).
    notify_socket = os.environ.pop("NOTIFY_SOCKET", None)

    from .patching import patch_all

    # The master opens no TLS connection (it only loads the apps' certificates to check
    # them, railcar.tls): ssl stays unpatched, and unimported unless an app has TLS.
    patch_all(ssl=False)

    from . import logs, proctitle

    proctitle.set_title("master", args=sys.argv[1:] if args is None else args)
    from .master import Master, bind_all
    from .sockets import BindError

    try:
        log = logs.setup(config.log_file)
    except logs.LogFileError as exc:
        _report(f"railcar: {exc}\n", ok=False)
        sys.stderr.write(f"railcar: {exc}\n")
        return 1
    try:
        listeners = bind_all(config)
        master = Master(config, log, listeners,
                        lambda *lines: notify_systemd(notify_socket, *lines))
        return master.run(on_started=lambda m: _report_first_boot(m, notify_socket))
    except (BindError, RuntimeError) as exc:
        log.error("%s", exc)
        _report(f"railcar: {exc}\n", ok=False)
        if config.log_file and not config.daemon:
            sys.stderr.write(f"railcar: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
