"""The master's handle on one worker process: start it, follow its output and channel, stop it.

Runs in the master (gevent). The worker's stdout and stderr come back through a pipe: each
line goes to the server log prefixed with the app and pid, and the last lines are kept so a
boot failure can be reported with the app's own error output.
"""

from __future__ import annotations

import collections
import json
import os
import pwd
import signal
import socket
import subprocess
import time
from typing import Callable

import gevent
import gevent.event
import gevent.subprocess
import psutil

from . import states
from .channel import Channel
from .release import Release

OUTPUT_TAIL_LINES = 200


class WorkerProcess:
    """One worker. `on_exit(worker)` is called in the master once the process is reaped."""

    def __init__(self, app_name: str, release: Release, log, on_exit: Callable):
        self.app_name = app_name
        self.release = release
        self.log = log
        self.on_exit = on_exit
        self.state = states.BOOTING
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.boot_error: str | None = None
        self.returncode: int | None = None
        self.retired = False                  # True once asked to stop (not a crash)
        self.output_tail: collections.deque[str] = collections.deque(maxlen=OUTPUT_TAIL_LINES)
        self.booted = gevent.event.Event()    # set when BOOTING ends (ready or failed)
        self.exited = gevent.event.Event()
        self.popen: gevent.subprocess.Popen | None = None
        self.channel: Channel | None = None
        self.pending: dict[int, gevent.event.AsyncResult] = {}
        self.next_call_id = 0
        self.ps: psutil.Process | None = None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    # --- starting -------------------------------------------------------------------------
    def start(self, listeners: list[socket.socket], spec: dict, env: dict[str, str],
              run_as=None) -> None:
        """Fork and exec `python -m railcar.worker` with the listeners and a channel inherited.

        `run_as` (a config.Account, only when the master runs as root): the worker's user,
        group and supplementary groups, and its HOME/USER/LOGNAME.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        fds = [sock.fileno() for sock in listeners]
        spec = dict(spec, release=self.release.path, module=self.release.module,
                    listen_fds=fds, control_fd=theirs.fileno())
        child_env = dict(os.environ, **env, RAILCAR_WORKER=json.dumps(spec), PYTHONUNBUFFERED="1")
        account = {}
        if run_as is not None:
            account = {"user": run_as.uid, "group": run_as.gid,
                       "extra_groups": list(run_as.extra_groups)}
            child_env.update(USER=run_as.user, LOGNAME=run_as.user, HOME=_home(run_as.uid))
        try:
            self.popen = gevent.subprocess.Popen(
                [self.release.python, "-m", "railcar.worker"], cwd=self.release.path,
                env=child_env, pass_fds=fds + [theirs.fileno()], stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, close_fds=True, **account)
        except OSError as exc:
            ours.close()
            self.boot_error = f"cannot start {self.release.python}: {exc}"
            self._change_state(states.FAILED)
            raise
        finally:
            theirs.close()
        self.channel = Channel(ours)
        self.followers = [gevent.spawn(self._follow_output), gevent.spawn(self._follow_channel)]
        gevent.spawn(self._wait_exit)

    def _follow_output(self) -> None:
        prefix = f"[{self.app_name}:{self.pid}] "
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.output_tail.append(line)
            self.log.info("%s%s", prefix, line)

    def _follow_channel(self) -> None:
        for message in self.channel.messages():
            event = message.get("event")
            if event == "ready" and self.state == states.BOOTING:
                self.ready_at = time.time()
                self._change_state(states.READY)
            elif event == "boot_error":
                self.boot_error = message.get("error")
            elif "reply" in message:
                waiter = self.pending.pop(message["reply"], None)
                if waiter is not None:
                    waiter.set(message.get("result"))

    def _wait_exit(self) -> None:
        self.returncode = self.popen.wait()
        # Let the last output and channel messages (a boot error) arrive before judging.
        gevent.joinall(self.followers, timeout=2)
        self.channel.close()
        for waiter in self.pending.values():
            waiter.set(None)
        if self.state == states.BOOTING:
            self._change_state(states.FAILED)
        elif self.state != states.FAILED:
            self._change_state(states.EXITED)
        self.exited.set()
        self.on_exit(self)

    def _change_state(self, new: str) -> None:
        states.check_transition(self.state, new)
        self.state = new
        if new != states.BOOTING:
            self.booted.set()

    # --- waiting and asking ---------------------------------------------------------------
    def wait_ready(self, timeout: float) -> bool:
        """Block until READY (True) or failed/timed out (False; the worker is then killed)."""
        if not self.booted.wait(timeout):
            self.boot_error = f"the app did not become ready within {timeout:g} seconds"
            self.kill(signal.SIGKILL)
            self.exited.wait(5)
            return False
        return self.state == states.READY

    def failure_text(self) -> str:
        """What went wrong at boot, with the app's own output."""
        parts = [f"worker {self.pid} of {self.app_name} failed to boot "
                 f"(release {self.release.path}, python {self.release.python})"]
        if self.returncode is not None:
            parts[0] += f": exit status {self.returncode}"
        if self.boot_error:
            parts.append(self.boot_error.rstrip())
        elif self.output_tail:
            parts.append("\n".join(self.output_tail))
        return "\n".join(parts)

    def call(self, name: str, timeout: float = 2.0) -> dict | None:
        """Ask the worker something over its channel; None if it does not answer in time."""
        if self.state not in (states.READY, states.RETIRING) or self.channel is None:
            return None
        self.next_call_id += 1
        waiter = gevent.event.AsyncResult()
        self.pending[self.next_call_id] = waiter
        try:
            self.channel.send({"call": name, "id": self.next_call_id})
            return waiter.get(timeout=timeout)
        except (OSError, gevent.Timeout):
            return None
        finally:
            self.pending.pop(self.next_call_id, None)

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

    def resources(self) -> dict:
        """RSS in bytes and CPU % since the previous sample (0.0 on the first one)."""
        try:
            if self.ps is None:
                self.ps = psutil.Process(self.pid)
            with self.ps.oneshot():
                return {"rss": self.ps.memory_info().rss, "cpu": self.ps.cpu_percent(None)}
        except (psutil.Error, TypeError):
            return {"rss": None, "cpu": None}

    def describe(self) -> dict:
        return {"pid": self.pid, "release": self.release.path, "python": self.release.python,
                "state": self.state, "started_at": self.started_at, "ready_at": self.ready_at}


def _home(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return "/"
