"""The master's handle on one worker process: start it, follow its output and channel, stop it.

Runs in the master (gevent). The worker's stdout and stderr come back through a pipe: each
line goes to the server log prefixed with the app and pid, and the last lines are kept so a
boot failure can be reported with the app's own error output.

This is the real side of the process factory seam (railcar.seam): `OSProcessFactory` makes
WorkerProcess handles; the pool never touches them but through that interface.

Two ways to get the process, one handle: `start` runs `python -m railcar.worker` (or, for a
preloader, `railcar.preloader`) as our child with gevent.subprocess.Popen; `start_forked` asks
a preloader to fork one. `self.popen` is then either a Popen or a ForkedProcess, which offers
the part of Popen's interface used here (pid, stdout, wait, send_signal) for a grandchild.

What a worker or preloader sends is untrusted (it runs app code) and cannot break the master:
output lines are read with a bound (the rest of a longer line is dropped, counted); channel
messages are checked (railcar.channel, railcar.replies), and a bad one is logged and dropped
while the reader goes on; a pid a preloader reports is verified to be its child and then
signalled only through a pidfd (or psutil's start-time check where there is no pidfd), so a
recycled pid is never hit.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import time
from typing import Callable

import gevent
import gevent.event
import gevent.subprocess
import psutil

from . import release as release_module
from . import replies, states
from .channel import BadMessage, Channel
from .config import HEALTH_MARGIN
from .forked import ForkedProcess
from .release import Release

OUTPUT_TAIL_LINES = 200
READY_POLL = 0.25     # how often wait_ready looks whether the health check began
MAX_OUTPUT_LINE = 16 * 1024     # bytes of one output line kept; the rest is dropped
DROP_LOG_INTERVAL = 1.0         # at most one "dropped a message" line per process per second


class WorkerProcess:
    """One worker. `on_exit(worker)` is called in the master once the process is reaped."""

    def __init__(self, app_name: str, release: Release, log, on_exit: Callable,
                 kind: str = "worker"):
        self.app_name = app_name
        self.kind = kind                      # "worker" or "preloader"
        self.release = release
        self.log = log
        self.on_exit = on_exit
        self.state = states.BOOTING
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.event_loop: str | None = None    # its event-loop backend, told when ready
        self.boot_error: str | None = None
        self.health_error: str | None = None  # why its health check failed
        self.health_since: float | None = None   # monotonic: its health check began
        self.returncode: int | None = None
        self.retired = False                  # True once asked to stop (not a crash)
        self.output_tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        self.booted = gevent.event.Event()    # set when BOOTING ends (ready or failed)
        self.exited = gevent.event.Event()
        self.popen: gevent.subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.pending: dict[int, tuple[str, gevent.event.AsyncResult]] = {}
        self.next_call_id = 0
        self.ps: psutil.Process | None = None
        self.preloader: WorkerProcess | None = None     # the one that forked this worker
        # Preloader: the live workers it forked (verified), and their exit statuses. Only
        # pids in `forked` are ever keys of `child_exits`.
        self.forked: set[int] = set()
        self.child_exits: dict[int, gevent.event.AsyncResult] = {}
        self.dropped = 0                      # malformed messages dropped
        self.next_drop_log = 0.0

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    # --- starting -------------------------------------------------------------------------
    def start(self, listeners: list[socket.socket], spec: dict, env: dict[str, str],
              run_as=None) -> None:
        """Fork and exec `python -m railcar.worker` (railcar.preloader for a preloader) with
        the listeners and a channel inherited.

        `run_as` (a config.Account, only when the master runs as root): the worker's user,
        group and supplementary groups, and its HOME/USER/LOGNAME.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [sock.fileno() for sock in listeners]
        spec = dict(spec, release=self.release.path, module=self.release.module,
                    listen_fds=fds, control_fd=theirs.fileno())
        inherited = fds + [theirs.fileno()]
        if spec.get("balance_fd") is not None:  # the app's connection counts (http.balance)
            inherited.append(spec["balance_fd"])
        child_env = dict(os.environ, **env, RAILCAR_WORKER=json.dumps(spec), PYTHONUNBUFFERED="1")
        account = {}
        if run_as is not None:
            account = run_as.process_options()
            child_env.update(run_as.environ())
        try:
            self.popen = gevent.subprocess.Popen(
                [self.release.python, "-m", f"railcar.{self.kind}"], cwd=self.release.path,
                env=child_env, pass_fds=inherited, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, close_fds=True, **account)
        except OSError as exc:
            ours.close()
            self.boot_error = f"cannot start {self.release.python}: {exc}"
            self._change_state(states.FAILED)
            raise
        finally:
            theirs.close()
        self._follow(ours)

    def start_forked(self, preloader: WorkerProcess) -> None:
        """Have `preloader` (READY) fork this worker: we make its channel and output pipe and
        pass their far ends along with the request. Raises OSError (state FAILED) if it
        cannot."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        output, output_end = os.pipe()
        try:
            reply = preloader.call("fork", timeout=10.0, fds=[theirs.fileno(), output_end])
        finally:
            theirs.close()
            os.close(output_end)
        try:
            if not reply or "pid" not in reply:
                why = (reply or {}).get("error", "no answer")
                raise OSError(f"preloader {preloader.pid} could not fork a worker: {why}")
            process = ForkedProcess(reply["pid"], output, preloader)
        except OSError as exc:
            ours.close()
            os.close(output)
            if reply and "pid" in reply:
                preloader.forked.discard(reply["pid"])
                preloader.child_exits.pop(reply["pid"], None)
            self.boot_error = str(exc)
            self._change_state(states.FAILED)
            raise OSError(self.boot_error) from None
        self.preloader = preloader
        self.popen = process
        self.ps = process.ps
        self._follow(ours)

    def _follow(self, channel_socket: socket.socket) -> None:
        self.channel = Channel(channel_socket)
        self.followers = [gevent.spawn(self._follow_output), gevent.spawn(self._follow_channel)]
        gevent.spawn(self._wait_exit)

    def _follow_output(self) -> None:
        prefix = f"[{self.app_name}:{self.pid}] "
        for line in bounded_lines(self.popen.stdout, MAX_OUTPUT_LINE):
            self.output_tail.append(line)
            self.log.info("%s%s", prefix, line)

    def _follow_channel(self) -> None:
        for message in self.channel.messages(on_bad=self._dropped):
            try:
                self._dispatch(message)
            except BadMessage as exc:
                self._dropped(exc)

    def _dispatch(self, message: dict) -> None:
        """Act on one message from the process; BadMessage if it is not one of ours."""
        if "reply" in message:
            call_id = message["reply"]
            if type(call_id) is not int:
                raise BadMessage(f"a reply to call id {replies.show(call_id)}")
            name, waiter = self.pending.pop(call_id, (None, None))
            if waiter is None:
                return      # a late answer to a call that timed out
            try:
                result = replies.check_reply(name, message.get("result"))
            except BadMessage:
                waiter.set(None)
                raise
            if name == "fork" and "pid" in result:
                # Before the next message, which may be that worker's exit already.
                self.forked.add(result["pid"])
            waiter.set(result)
            return
        event = replies.check_event(message, self.kind)
        if event["event"] == "ready" and self.state == states.BOOTING:
            self.ready_at = time.time()
            self.event_loop = event["event_loop"]
            if self.kind == "worker":     # a preloader's is in the spawner's "ready in" line
                self.log.info("%s: worker %s ready (event loop %s)", self.app_name, self.pid,
                              self.event_loop or "unknown")
            self._change_state(states.READY)
        elif event["event"] == "boot_error":
            self.boot_error = event["error"]
        elif event["event"] == "health_check":
            self.health_since = time.monotonic()
        elif event["event"] == "health_error":
            self.health_error = event["error"]
        elif event["event"] == "exited":        # from a preloader: one of its workers
            if event["pid"] not in self.forked:
                raise BadMessage(f"exit of {event['pid']}, not a worker it forked")
            self._child_exit(event["pid"]).set(event["returncode"])

    def _dropped(self, why: BadMessage) -> None:
        """Log a dropped message: at most once a second per process, with a count."""
        self.dropped += 1
        now = time.monotonic()
        if now >= self.next_drop_log:
            self.next_drop_log = now + DROP_LOG_INTERVAL
            self.log.warning("%s: dropped a malformed message from %s %s: %s "
                             "(%d dropped so far)", self.app_name, self.kind, self.pid, why,
                             self.dropped)

    def _wait_exit(self) -> None:
        self.returncode = self.popen.wait()
        # Let the last output and channel messages (a boot error) arrive before judging.
        gevent.joinall(self.followers, timeout=2)
        self.channel.close()
        for _name, waiter in self.pending.values():
            waiter.set(None)
        if self.state == states.BOOTING:
            self._change_state(states.FAILED)
        elif self.state != states.FAILED:
            self._change_state(states.EXITED)
        self.exited.set()
        self.on_exit(self)

    def _child_exit(self, pid: int) -> gevent.event.AsyncResult:
        return self.child_exits.setdefault(pid, gevent.event.AsyncResult())

    def _change_state(self, new: str) -> None:
        states.check_transition(self.state, new)
        self.state = new
        if new != states.BOOTING:
            self.booted.set()

    # --- waiting and asking ---------------------------------------------------------------
    def wait_ready(self, timeout: float, health_timeout: float = 0.0) -> bool:
        """Block until READY (True) or failed/timed out (False; the worker is then killed).

        `timeout` counts from now; once the worker says its health check began, it has
        `health_timeout` (plus a second, so the worker's own timeout speaks first) from then.
        """
        deadline = time.monotonic() + timeout
        while not self.booted.wait(min(max(deadline - time.monotonic(), 0), READY_POLL)):
            if self.health_since is not None:     # imported: the check has its own clock
                deadline = self.health_since + health_timeout + HEALTH_MARGIN
            if time.monotonic() < deadline:
                continue
            if self.health_since is not None:
                self.health_error = (f"the health check did not answer within "
                                     f"{health_timeout:g} seconds (the app does not yield)")
            else:
                self.boot_error = f"the app did not become ready within {timeout:g} seconds"
            self.kill(signal.SIGKILL)
            self.exited.wait(5)
            return False
        return self.state == states.READY

    def failure_text(self) -> str:
        """What went wrong at boot, with the app's own output."""
        what = "failed its health check" if self.health_error else "failed to boot"
        parts = [f"{self.kind} {self.pid} of {self.app_name} {what} "
                 f"(release {self.release.path}, python {self.release.python})"]
        if self.returncode is not None:
            parts[0] += f": exit status {self.returncode}"
        if self.health_error:
            parts.append(self.health_error.rstrip())
        elif self.boot_error:
            parts.append(self.boot_error.rstrip())
        elif self.output_tail:
            parts.append("\n".join(self.output_tail))
        return "\n".join(parts)

    def call(self, name: str, timeout: float = 2.0, fds: list[int] = (),
             args: dict | None = None) -> dict | None:
        """Ask the worker something over its channel: its reply, checked by
        railcar.replies; None if it does not answer in time or answers nonsense.
        `fds` travel with the request (the worker side must expect them); `args`, if
        given, are the call's keyword arguments (the message's "args")."""
        if self.state not in (states.READY, states.RETIRING) or self.channel is None:
            return None
        # The id is this call's own: other calls to the same worker may start (and bump
        # next_call_id) while this one waits, and each must get and clean up its own reply.
        self.next_call_id += 1
        call_id = self.next_call_id
        waiter = gevent.event.AsyncResult()
        self.pending[call_id] = (name, waiter)
        try:
            message = {"call": name, "id": call_id}
            if args:
                message["args"] = args
            if fds:
                message["fds"] = len(fds)
            self.channel.send(message, fds)
            return waiter.get(timeout=timeout)
        except (OSError, gevent.Timeout):
            return None
        finally:
            self.pending.pop(call_id, None)

    def tell(self, name: str) -> None:
        """Send a call without waiting for the answer."""
        try:
            self.channel.send({"call": name})
        except OSError:
            pass

    # --- stopping -------------------------------------------------------------------------
    def retire(self) -> None:
        """READY/BOOTING -> RETIRING: SIGTERM; the worker finishes in-flight requests and exits."""
        if self.state in states.SERVING:
            self.retired = True
            self._change_state(states.RETIRING)
            self.kill(signal.SIGTERM)

    def kill(self, sig: int) -> None:
        if self.popen is not None and self.returncode is None:
            try:
                self.popen.send_signal(sig)
            except OSError:
                pass

    def resources(self, uss: bool = True) -> dict:
        """RSS in bytes, CPU % since the previous sample (0.0 on the first one), and with
        `uss` the USS in bytes.

        USS (unique set size) is the memory the process alone holds: a worker forked by a
        preloader shares the app's pages with it and its siblings, which count in its RSS
        but not in its USS. None where it cannot be read (psutil.AccessDenied). Reading it
        walks the process's page tables (/proc/PID/smaps_rollup: milliseconds for a large
        app), which is why callers ask for it less often than for RSS."""
        try:
            if self.ps is None:
                self.ps = psutil.Process(self.pid)
            with self.ps.oneshot():
                sample = {"rss": self.ps.memory_info().rss, "cpu": self.ps.cpu_percent(None)}
                if uss:
                    try:
                        sample["uss"] = self.ps.memory_full_info().uss
                    except psutil.AccessDenied:
                        sample["uss"] = None
                return sample
        except (psutil.Error, TypeError):
            return {"rss": None, "uss": None, "cpu": None}

    def describe(self) -> dict:
        return {"pid": self.pid, "release": self.release.path, "python": self.release.python,
                "state": self.state, "started_at": self.started_at, "ready_at": self.ready_at,
                "event_loop": self.event_loop}


class OSProcessFactory:
    """The real process factory (railcar.seam.ProcessFactory): workers and preloaders as
    processes of this machine, through WorkerProcess."""

    def __init__(self, log):
        self.log = log

    def resolve(self, root: str, module: str | None, python: str | None,
                env: dict[str, str], run_as) -> Release:
        return release_module.resolve(root, module, python, env, run_as)

    def run_on_starting(self, release: Release, hooks_module: str, server: dict, run_as,
                        timeout: float) -> str:
        return release_module.run_on_starting(release, hooks_module, server, run_as, timeout)

    def start(self, kind: str, app_name: str, release: Release, spec: dict, listeners,
              env: dict[str, str], run_as, on_exit: Callable) -> WorkerProcess:
        process = WorkerProcess(app_name, release, self.log, on_exit, kind=kind)
        try:
            process.start(listeners, spec, env, run_as)
        except OSError:
            pass    # state is FAILED with the reason in boot_error
        return process

    def fork(self, preloader: WorkerProcess, app_name: str, release: Release,
             on_exit: Callable) -> WorkerProcess:
        process = WorkerProcess(app_name, release, self.log, on_exit)
        try:
            process.start_forked(preloader)
        except OSError:
            pass    # state is FAILED with the reason in boot_error
        return process


def bounded_lines(stream, limit: int):
    """Decoded lines of `stream` (binary), each cut to `limit` bytes: the rest of a longer
    line is read and dropped as it comes (never held whole), and counted in a note."""
    while True:
        raw = stream.readline(limit)
        if not raw:
            return
        if raw.endswith(b"\n"):
            yield raw[:-1].decode("utf-8", "replace")
            continue
        dropped = 0
        while True:
            rest = stream.readline(limit)
            if not rest:
                break
            if rest.endswith(b"\n"):
                dropped += len(rest) - 1
                break
            dropped += len(rest)
        line = raw.decode("utf-8", "replace")
        yield f"{line} [{dropped} more bytes of this line dropped]" if dropped else line
