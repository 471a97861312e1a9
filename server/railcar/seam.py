"""The seam between supervision and the operating system: what the pool asks of a process
factory and of each process it returns.

Runs in the master. The pool (railcar.pool, spawner, rollout, limits) never forks, execs,
signals, reads /proc or opens a channel itself: it goes through a `ProcessFactory` and the
`Process` handles it returns, as Supervisor's state machine goes through `options.fork`.
railcar.process.OSProcessFactory is the real one (fork/exec, preloader forks, pidfds, the
channel); tests/unit/fakes.py has one that never forks, for fast tests of the pool's logic.

Contracts every implementation keeps:
- `start` and `fork` never raise for a process that cannot be started: they return a handle
  whose state is FAILED and whose `failure_text()` says why.
- A handle's `state` moves only along railcar.states' transitions. `on_exit(process)` (given
  to `start`/`fork`) is called once, in the master, after the process is gone and its state is
  EXITED or FAILED; `exited` is set just before.
- `wait_ready` blocks (gevent) until READY (True) or not (False: the process is killed).
- `call` returns the checked reply or None (no answer in time, not READY/RETIRING); it never
  raises. `retire`, `kill` and `tell` never raise either.
- `resolve` and `run_on_starting` run the app's interpreter (to check it, to run a hook):
  that too is behind the seam.
"""

from __future__ import annotations

from typing import Callable, Protocol

from .release import Release


class Process(Protocol):
    """One worker or preloader as the pool sees it (railcar.process.WorkerProcess)."""

    kind: str                   # "worker" or "preloader"
    release: Release
    state: str
    started_at: float
    ready_at: float | None
    event_loop: str | None      # its event-loop backend, told when ready (railcar.eventloop)
    retired: bool               # asked to stop (its exit is not a crash)
    returncode: int | None
    health_error: str | None
    preloader: "Process | None"     # the preloader that forked it (smart spawning)
    exited: object              # a gevent Event, set once the process is gone

    @property
    def pid(self) -> int | None: ...

    def wait_ready(self, timeout: float, health_timeout: float = 0.0) -> bool: ...

    def failure_text(self) -> str: ...

    def call(self, name: str, timeout: float = 2.0, fds: list[int] = (),
             args: dict | None = None) -> dict | None: ...

    def tell(self, name: str) -> None: ...

    def retire(self) -> None: ...

    def kill(self, sig: int) -> None: ...

    def resources(self, uss: bool = True) -> dict: ...


class ProcessFactory(Protocol):
    """Makes the processes of one master (one factory for every app)."""

    def resolve(self, root: str, module: str | None, python: str | None,
                env: dict[str, str], run_as) -> Release:
        """The release `root` points to now (release.resolve); raises release.ReleaseError."""

    def run_on_starting(self, release: Release, hooks_module: str, server: dict, run_as,
                        timeout: float) -> str:
        """The app's on_starting hook in a one-shot process of its own (release.
        run_on_starting): its output; raises release.ReleaseError if it fails."""

    def start(self, kind: str, app_name: str, release: Release, spec: dict, listeners,
              env: dict[str, str], run_as, on_exit: Callable[[Process], None]) -> Process:
        """Exec a worker or (kind "preloader") a preloader of `release`."""

    def fork(self, preloader: Process, app_name: str, release: Release,
             on_exit: Callable[[Process], None]) -> Process:
        """Have `preloader` (READY) fork a worker."""
