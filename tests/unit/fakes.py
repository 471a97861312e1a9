"""A process factory that never forks (railcar.seam), and a harness that runs one AppPool on it
the way the master does: events through a queue, one reconcile per drained batch, a tick.

FakeProcess keeps railcar.states' transitions (it changes state through check_transition),
so a pool that drives a process through a transition the real one refuses fails here too.
Every start, fork, ready, retire, signal, exit and call (but `stats`) is appended to
`timeline` as a tuple, so tests assert order ("the new worker was ready before the old one
retired").
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import signal
import time

import gevent
import gevent.event
import gevent.queue

from railcar import states
from railcar.config import AppConfig
from railcar.pool import AppPool, Wake
from railcar.release import Release, ReleaseError
from railcar.views import Supervision

MIB = 1024 * 1024
READY, FAIL, UNHEALTHY, HANG, NO_START = "ready", "fail", "unhealthy", "hang", "no start"


class FakeProcess:
    def __init__(self, factory: FakeFactory, kind: str, app_name: str, release: Release,
                 on_exit, preloader: FakeProcess | None = None):
        self.factory = factory
        self.kind = kind
        self.app_name = app_name
        self.release = release
        self.on_exit = on_exit
        self.preloader = preloader
        self.state = states.BOOTING
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.event_loop: str | None = None
        self.retired = False
        self.returncode: int | None = None
        self.boot_error: str | None = None
        self.health_error: str | None = None
        self.exited = gevent.event.Event()
        self.booted = gevent.event.Event()
        self.pid: int | None = None
        self.signals: list[int] = []
        self.told: list[str] = []
        self.stats = {"requests": 0, "in_flight": 0}
        self.answers = True                 # False: every call goes unanswered
        self.memory = {"rss": 50 * MIB, "uss": 10 * MIB, "cpu": 0.0}

    # --- what the test makes happen -------------------------------------------------------
    def boot(self, outcome: str) -> None:
        """BOOTING -> READY, or a failure (FAILED once it exits)."""
        if outcome == READY:
            self._change(states.READY)
            self.ready_at = time.time()
        elif outcome == FAIL:
            self.boot_error = "Traceback (most recent call last):\nImportError: broken"
            self.exit(1)
        elif outcome == UNHEALTHY:
            self.health_error = "health check GET / answered 500"
            self.exit(1)

    def exit(self, returncode: int = 0) -> None:
        """The process is gone (a crash unless it was retired)."""
        if self.exited.is_set():
            return
        self.returncode = returncode
        self._change(states.FAILED if self.state == states.BOOTING else states.EXITED)
        self.factory.timeline.append(("exit", self.pid))
        self.exited.set()
        self.on_exit(self)

    def _change(self, new: str) -> None:
        states.check_transition(self.state, new)
        self.state = new
        if new == states.READY:
            self.factory.timeline.append(("ready", self.pid))
        if new != states.BOOTING:
            self.booted.set()

    # --- railcar.seam.Process -------------------------------------------------------------
    def wait_ready(self, timeout: float, health_timeout: float = 0.0) -> bool:
        if not self.booted.wait(timeout):
            self.boot_error = f"the app did not become ready within {timeout:g} seconds"
            self.kill(signal.SIGKILL)
            return False
        return self.state == states.READY

    def failure_text(self) -> str:
        what = "failed its health check" if self.health_error else "failed to boot"
        return (f"{self.kind} {self.pid} of {self.app_name} {what} (release "
                f"{self.release.path})\n{self.health_error or self.boot_error or ''}")

    def call(self, name: str, timeout: float = 2.0, fds=(), args=None) -> dict | None:
        if name != "stats":
            self.factory.timeline.append(("call", self.pid, name, args))
        if self.state not in (states.READY, states.RETIRING) or not self.answers:
            return None
        return dict(self.stats) if name == "stats" else {}

    def tell(self, name: str) -> None:
        self.told.append(name)

    def retire(self) -> None:
        if self.state in states.SERVING:
            self.retired = True
            self._change(states.RETIRING)
            self.factory.timeline.append(("retire", self.pid))
            self.kill(signal.SIGTERM)

    def kill(self, sig: int) -> None:
        if self.exited.is_set():
            return
        self.signals.append(sig)
        if sig == signal.SIGKILL:
            self.exit(-signal.SIGKILL)
        elif sig in (signal.SIGTERM, signal.SIGQUIT) and self.factory.exit_on_term:
            gevent.spawn(self.exit, 0)      # it finishes its requests, then exits

    def resources(self, uss: bool = True) -> dict:
        sample = dict(self.memory)
        if not uss:
            sample.pop("uss")
        return sample


class FakeFactory:
    """railcar.seam.ProcessFactory without the OS. `outcomes[release name]` says how new
    processes of that release boot (READY by default; a list: one per process, in order);
    `stats[release name]`, what they answer to `stats` at first; `current` names the release
    the app root points to."""

    def __init__(self):
        self.timeline: list[tuple] = []
        self.pids = itertools.count(1000)
        self.current = "A"
        self.resolve_error: str | None = None
        self.outcomes: dict[str, str | list[str]] = {}
        self.stats: dict[str, dict] = {}
        self.processes: list[FakeProcess] = []
        self.exit_on_term = True            # False: retiring workers linger (SIGKILL later)

    def release(self, name: str) -> Release:
        return Release(path=f"/srv/app/releases/{name}", module="wsgi",
                       python="/usr/bin/python3")

    def resolve(self, root, module, python, env, run_as) -> Release:
        if self.resolve_error:
            raise ReleaseError(self.resolve_error)
        return self.release(self.current)

    def run_on_starting(self, release, hooks_module, server, run_as, timeout) -> str:
        self.timeline.append(("on_starting", hooks_module))
        return ""

    def _begin(self, process: FakeProcess) -> FakeProcess:
        self.processes.append(process)
        name = process.release.path.rsplit("/", 1)[1]
        outcome = self.outcomes.get(name, READY)
        if isinstance(outcome, list):       # one outcome per process, in order
            outcome = outcome.pop(0) if outcome else READY
        process.stats.update(self.stats.get(name, {}))
        if outcome == NO_START:
            process.boot_error = "cannot start /usr/bin/python3: [Errno 12] ENOMEM"
            process._change(states.FAILED)
            return process
        process.pid = next(self.pids)
        self.timeline.append(("start", process.kind, process.pid,
                              process.release.path.rsplit("/", 1)[1]))
        if outcome != HANG:
            gevent.spawn(process.boot, outcome)     # it boots while the master waits
        return process

    def start(self, kind, app_name, release, spec, listeners, env, run_as, on_exit):
        return self._begin(FakeProcess(self, kind, app_name, release, on_exit))

    def fork(self, preloader, app_name, release, on_exit):
        return self._begin(FakeProcess(self, "worker", app_name, release, on_exit, preloader))

    def alive(self, kind: str = "worker") -> list[FakeProcess]:
        return [p for p in self.processes if p.kind == kind and not p.exited.is_set()
                and p.pid is not None]


class FakeClock:
    """time.monotonic for the pool, moved by the test."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """One AppPool on a FakeFactory, run like the master runs it."""

    def __init__(self, workers: int = 2, boot_timeout: float = 0.5, canary=None,
                 root: str = "/srv/app/current", listeners=(), **policy):
        """`root`: the app root (its tmp/restart.txt is watched); `listeners`: the app's
        sockets (the master answers on them while the app is down)."""
        self.factory = FakeFactory()
        self.clock = FakeClock()
        self.queue: gevent.queue.Queue = gevent.queue.Queue()
        max_request_time = policy.pop("max_request_time", 0)
        policy.setdefault("spawn_method", "direct")
        supervision = dataclasses.replace(Supervision(), **policy)
        self.app = AppConfig(
            name="app", root=root, module=None, binds=[], workers=workers,
            python=None, env={}, access_log=None, boot_timeout=boot_timeout,
            limits={"max_request_time": max_request_time},
            supervision=supervision,
            canary=canary or {"canary_duration": 0, "canary_min_requests": 0,
                              "canary_max_error_rate": 0.0})
        self.pool = AppPool(self.app, list(listeners), graceful_timeout=0.5,
                            log=logging.getLogger("railcar.unit"), factory=self.factory,
                            notify=self.queue.put, clock=self.clock)
        self.reconciles = 0

    def step(self) -> None:
        """One turn of the master's loop: let greenlets run, drain the queue, reconcile the
        pool once if anything was queued."""
        gevent.sleep(0.001)
        woken = False
        while not self.queue.empty():
            event = self.queue.get()
            assert isinstance(event, Wake) and event.pool is self.pool
            woken = True
        if woken:
            self.reconcile()

    def reconcile(self) -> None:
        self.reconciles += 1
        self.pool.reconcile()

    def tick(self) -> gevent.Greenlet | None:
        """The master's tick: a rolling restart if tmp/restart.txt was touched (returned),
        reconcile, then one supervision round, run to its end."""
        restart = self.restart() if self.pool.restart_txt_touched() else None
        self.reconcile()
        self.pool.supervise()
        if self.pool.upkeep.greenlet is not None:
            self.pool.upkeep.greenlet.join(2)
        self.step()
        return restart

    def until(self, predicate, timeout: float = 3.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.step()
            value = predicate()
            if value:
                return value
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def start(self) -> Harness:
        """The master's first reconcile, then wait until every wanted worker is ready."""
        self.reconcile()
        self.until(lambda: len(self.ready()) == self.app.workers, what="the first workers")
        return self

    def ready(self) -> list[FakeProcess]:
        return [w for w in self.pool.workers if w.state == states.READY]

    def pids(self, state: str = states.READY) -> set[int]:
        return {w.pid for w in self.pool.workers if w.state == state}

    def restart(self):
        """A rolling restart in its own greenlet (as the admin socket runs it)."""
        return gevent.spawn(self.pool.restart)

    def index(self, event: tuple) -> int:
        return self.factory.timeline.index(event)
