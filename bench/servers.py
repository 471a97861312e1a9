"""The servers under test: how to start each on a WSGI app, wait until it serves, and stop it.

Every server gets the same app directory (holding `wsgi.py` with `application`), the same
number of worker processes and a fresh loopback port. Each runs in its own session (process
group), so Ctrl-C at the terminal reaches only the benchmark, which then stops the server.
Only processes started here are ever signalled: the server's pid, and as a last resort its
process group (whose id is that same pid).

A running server can also be restarted gracefully (`RunningServer.restart`): every server
here by SIGHUP to its master, the signal `systemctl reload` sends (railcar: a rolling restart
of every app; gunicorn starts new workers then retires the old; uWSGI reloads gracefully: old
workers finish, then it re-executes and forks new ones; granian respawns its workers one by
one). The restart is done when none of the master's descendants from before the signal is
left and as many new ones run. railcar's `railcar restart` (the admin socket, for one app)
does the same rolling restart; the bench does not use it because the command's own start-up
(a Python interpreter importing click, 40-50 ms of CPU) would be measured on the cores the
serving workers share with the load, which a signal from the bench does not cost.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil

STOP_TIMEOUT = 20.0      # seconds from SIGTERM to SIGKILL of the process group
POLL_INTERVAL = 0.1
RESTART_POLL = 0.02      # how often a SIGHUP restart's progress is looked at


class ServerError(Exception):
    """A server could not be started or never answered."""


@dataclass
class Launch:
    """What every server is started with."""
    app_dir: Path
    port: int
    workers: int
    threads: int          # for thread-based peers only
    tmp: Path             # a private directory for sockets and logs
    executable: str       # the resolved path of the server's program


@dataclass
class ServerKind:
    name: str
    program: str                           # looked up in the venv's bin/, then on PATH
    argv: Callable[[Launch], list[str]]
    install: str                           # how to get it, shown when it is missing
    note: str = ""                         # how it runs, shown in the report
    restart: str | None = None             # "SIGHUP", or None: not supported


@dataclass
class RestartOutcome:
    ok: bool
    seconds: float                         # from the request to the restart's end
    detail: str = ""                       # the command's output, or why it failed


def _railcar(launch: Launch) -> list[str]:
    # Run as root, the peers run their workers as root too: railcar needs saying so.
    as_root = ["--allow-root"] if os.geteuid() == 0 else []
    return [launch.executable, "start", str(launch.app_dir), "--port", str(launch.port),
            "--workers", str(launch.workers),
            "--admin-socket", str(launch.tmp / "admin.sock"),
            "--log-file", str(launch.tmp / "railcar.log"), *as_root]


def _railcar_epoll(launch: Launch) -> list[str]:
    return [*_railcar(launch), "--event-loop", "epoll"]


def _gunicorn(worker_class: str, *extra: str) -> Callable[[Launch], list[str]]:
    def argv(launch: Launch) -> list[str]:
        return [launch.executable, "-k", worker_class, "-w", str(launch.workers),
                "-b", f"127.0.0.1:{launch.port}", "--chdir", str(launch.app_dir),
                *[arg.format(threads=launch.threads) for arg in extra], "wsgi:application"]
    return argv


def _uwsgi(launch: Launch) -> list[str]:
    # --http-socket closes the connection after each response without saying so, which wrk
    # counts as a read error per request; the header tells the client, as HTTP/1.1 wants.
    # (--http11-socket, the keep-alive variant, stalls after a request per connection under
    # --gevent.)
    return [launch.executable, "--master", "--processes", str(launch.workers),
            "--http-socket", f"127.0.0.1:{launch.port}", "--add-header", "Connection: close",
            "--gevent", "1000", "--gevent-monkey-patch", "--chdir", str(launch.app_dir),
            "--wsgi-file", "wsgi.py", "--callable", "application",
            "--need-app", "--die-on-term", "--disable-logging"]


def _granian(launch: Launch) -> list[str]:
    return [launch.executable, "--interface", "wsgi", "--host", "127.0.0.1",
            "--port", str(launch.port), "--workers", str(launch.workers), "wsgi:application"]


def _waitress(launch: Launch) -> list[str]:
    return [launch.executable, f"--listen=127.0.0.1:{launch.port}",
            f"--threads={launch.threads * launch.workers}", "wsgi:application"]


KINDS = {kind.name: kind for kind in [
    ServerKind("railcar", "railcar", _railcar, "pip install -e '.[server]'",
               "master + N gevent workers", restart="SIGHUP"),
    ServerKind("railcar-epoll", "railcar", _railcar_epoll, "pip install -e '.[server]'",
               "railcar with --event-loop epoll (gevent's default backend), to compare "
               "with the default", restart="SIGHUP"),
    ServerKind("gunicorn-gevent", "gunicorn", _gunicorn("gevent"), "pip install gunicorn",
               "-k gevent, worker_connections 1000", restart="SIGHUP"),
    ServerKind("gunicorn-sync", "gunicorn", _gunicorn("sync"), "pip install gunicorn",
               "-k sync: one request at a time per worker, no keep-alive", restart="SIGHUP"),
    ServerKind("gunicorn-gthread", "gunicorn", _gunicorn("gthread", "--threads", "{threads}"),
               "pip install gunicorn", "-k gthread --threads T per worker (time.sleep blocks "
               "a thread)", restart="SIGHUP"),
    ServerKind("uwsgi", "uwsgi", _uwsgi, "pip install uwsgi",
               "--http-socket (Connection: close, no keep-alive), --gevent 1000 "
               "--gevent-monkey-patch", restart="SIGHUP"),
    ServerKind("granian", "granian", _granian, "pip install granian",
               "--interface wsgi, default blocking threads", restart="SIGHUP"),
    ServerKind("waitress", "waitress-serve", _waitress, "pip install waitress",
               "one process, --threads T x workers"),
]}


def find_program(program: str, bin_dir: Path) -> str | None:
    """The program in BIN_DIR (the benchmark's venv), else on PATH, else None."""
    candidate = bin_dir / program
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which(program)


def exit_on_sigterm() -> None:
    """Make SIGTERM (`timeout`, `kill`) end this program as an exception would, so every
    `with RunningServer(...)` block still stops its server. Each server runs in a session of
    its own: without this, a benchmark ended by SIGTERM left its servers running."""
    def _exit(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _exit)


def live_children(pid: int, recursive: bool = False) -> set[int]:
    """The pids of PID's live children (RECURSIVE: and theirs); exited ones that their parent
    has not reaped yet (zombies) are left out. Empty if PID is gone."""
    try:
        children = psutil.Process(pid).children(recursive=recursive)
    except psutil.NoSuchProcess:
        return set()
    alive = set()
    for child in children:
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def free_port() -> int:
    """A loopback port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(port: int, path: str = "/") -> int | None:
    """The status of one GET to 127.0.0.1:PORT, or None if no HTTP answer came in 2 s."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


class RunningServer:
    """One started server. Use as a context manager: stops it and removes its temp dir."""

    def __init__(self, kind: ServerKind, executable: str, app_dir: Path, workers: int,
                 threads: int, boot_timeout: float):
        self.kind = kind
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{kind.name}-"))
        self.launch = Launch(app_dir=app_dir, port=free_port(), workers=workers,
                             threads=threads, tmp=self.tmp, executable=executable)
        self.boot_timeout = boot_timeout
        self.output_path = self.tmp / "output.log"
        self.process: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return self.launch.port

    def __enter__(self) -> "RunningServer":
        try:
            self.start()
            self.wait_until_serving()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def start(self) -> None:
        env = dict(os.environ, PYTHONPATH=str(self.launch.app_dir), PYTHONUNBUFFERED="1")
        with open(self.output_path, "wb") as output:
            self.process = subprocess.Popen(
                self.kind.argv(self.launch), cwd=self.launch.app_dir, env=env,
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True)

    def wait_until_serving(self) -> None:
        """Return once a GET / answers 200; raise ServerError on exit or after boot_timeout."""
        deadline = time.monotonic() + self.boot_timeout
        status = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"{self.kind.name} exited with status "
                                  f"{self.process.returncode} before serving\n{self.log_tail()}")
            status = answers(self.port)
            if status == 200:
                return
            time.sleep(POLL_INTERVAL)
        raise ServerError(f"{self.kind.name} did not answer GET / with 200 within "
                          f"{self.boot_timeout:g} s (last status: {status})\n{self.log_tail()}")

    def restart(self, timeout: float) -> RestartOutcome:
        """Restart the server gracefully, its own way (see the module's docstring), and return
        once that is done, failed, or TIMEOUT seconds passed (a failure)."""
        how = self.kind.restart
        if how is None:
            raise ServerError(f"{self.kind.name} has no graceful restart")
        started = time.monotonic()
        return self._signal_restart(signal.SIGHUP, started, timeout)

    def _signal_restart(self, signum: int, started: float, timeout: float) -> RestartOutcome:
        # Descendants, not only children: railcar's workers are its preloader's children.
        old = live_children(self.process.pid, recursive=True)
        self.process.send_signal(signum)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return RestartOutcome(False, time.monotonic() - started,
                                      f"{self.kind.name} exited with status "
                                      f"{self.process.returncode} during the restart")
            now = live_children(self.process.pid, recursive=True)
            if not (now & old) and len(now) >= len(old):
                return RestartOutcome(True, time.monotonic() - started,
                                      f"{len(old)} old processes replaced by {sorted(now)}")
            time.sleep(RESTART_POLL)
        return RestartOutcome(False, time.monotonic() - started,
                              f"after {signal.Signals(signum).name} the old processes were not "
                              f"all replaced within {timeout:g} s")

    def log_tail(self, lines: int = 15) -> str:
        texts = []
        for path in (self.output_path, self.tmp / "railcar.log"):
            if path.exists():
                texts += path.read_text(errors="replace").splitlines()[-lines:]
        return "\n".join("    " + line for line in texts[-lines:])

    def stop(self) -> None:
        """SIGTERM (graceful stop for every server here), then SIGKILL the group if needed."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill_group()
                self.process.wait(5)
        # Workers outlive a master that died abruptly; they are still in its process group.
        if self._group_alive():
            deadline = time.monotonic() + 5
            while self._group_alive() and time.monotonic() < deadline:
                time.sleep(POLL_INTERVAL)
            self._kill_group()

    def _group_alive(self) -> bool:
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _kill_group(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
