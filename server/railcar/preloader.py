"""Preloader process: `python -m railcar.preloader`, one per app release with smart spawning.

Runs in the preloader, started by the master exactly like a worker (the app's interpreter, cwd
the resolved release, the same RAILCAR_WORKER spec, listeners and channel inherited, the same
user/group). Contract with the master:
- It monkey-patches with gevent (its loop, which the workers it forks inherit, set up as a
  worker's: railcar.eventloop) and imports the app once, like a worker (railcar.worker), and
  then sends {"event": "ready"}; a failed import is reported as a worker's is
  ({"event": "boot_error", "error": traceback} and exit status 1). With spec "gc_freeze"
  (the default) it runs gc.collect() and gc.freeze() after the import, before it forks: the
  objects the app made at import go to the collector's permanent generation, so a worker's
  collections never write to them and their pages stay shared with the preloader.
- With spec "boot_nice" N (railcar.priority) it runs at N more nice until then (gevent and
  the app imported), when that can be undone, so a rolling restart's boot leaves the CPU to
  the workers serving; it is back to its own priority before it says ready and forks.
- {"call": "fork", "id": N, "fds": 2} comes with two descriptors: the worker's end of its own
  channel to the master and the write end of its output pipe. The preloader forks; the child
  re-initialises gevent, takes fd 1 and 2 from the pipe and runs railcar.worker's Worker with
  the app already imported (copy-on-write). The reply is {"pid": PID}.
- When a forked worker exits, {"event": "exited", "pid": PID, "returncode": N} (the master
  cannot wait for a grandchild).
- SIGTERM, SIGINT, SIGQUIT or the master's channel closing: exit at once. Forked workers are
  not affected: each is tied to the master by its own channel.
"""

from railcar import priority  # noqa: I001  (the boot's CPU priority, before its imports)

priority.lower_from_spec()

from railcar import worker as serving  # noqa: E402  (monkey-patches before anything else)

import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import gevent  # noqa: E402
import gevent.os  # noqa: E402

from railcar import eventloop, proctitle  # noqa: E402
from railcar.channel import Channel, ChannelClosed  # noqa: E402

FORK_FDS = 2    # the worker's channel, its output pipe


class Preloader:
    def __init__(self, spec: dict):
        self.spec = spec
        self.channel = Channel(socket.socket(fileno=spec["control_fd"]), max_fds=FORK_FDS)
        self.app = None
        self.signal_handlers = []

    def run(self) -> None:
        self.app = serving.import_app(self.spec, self.channel)
        if self.spec.get("gc_freeze", True):
            gc.collect()
            gc.freeze()
        priority.restore()      # before any fork: the workers inherit it
        proctitle.set_title("preloader", self.spec.get("app"), self.spec["release"])
        self.signal_handlers = [gevent.signal_handler(sig, self.exit_now)
                                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)]
        # gevent installs its SIGCHLD handler when the first child watcher starts, i.e. after
        # the first fork returns: a worker that exits before that (an app whose at-fork hook
        # exits) would send a SIGCHLD nobody hears, and its exit would go unreported.
        gevent.get_hub().loop.install_sigchld()
        self.channel.send({"event": "ready", "pid": os.getpid(), "python": sys.executable,
                           "release": self.spec["release"], "event_loop": eventloop.backend()})
        for message in self.channel.messages():
            if message.get("call") == "fork":
                result = self.fork(message)
            else:
                result = {"error": f"unknown call {message.get('call')!r}"}
            if "id" in message:
                self.channel.send({"reply": message["id"], "result": result})
        self.exit_now()

    def fork(self, message: dict) -> dict:
        try:
            control_fd, output_fd = self.channel.take_fds(message.get("fds", 0))
        except (ChannelClosed, ValueError) as exc:
            return {"error": str(exc)}
        sys.stdout.flush()
        sys.stderr.flush()
        if self.spec.get("gc_freeze", True):
            gc.freeze()     # what the preloader allocated since: cheap, keeps it shared too
        try:
            pid = gevent.os.fork_and_watch(callback=self.child_exited)
        except OSError as exc:
            os.close(control_fd)
            os.close(output_fd)
            return {"error": f"fork failed: {exc}"}
        if pid == 0:
            self.become_worker(control_fd, output_fd)    # never returns
        os.close(control_fd)
        os.close(output_fd)
        return {"pid": pid}

    def become_worker(self, control_fd: int, output_fd: int) -> None:
        """In the forked child (gevent re-initialised by fork_and_watch): serve, then exit."""
        code = 1
        try:
            for handler in self.signal_handlers:
                handler.cancel()
            self.channel.close()
            os.dup2(output_fd, 1)
            os.dup2(output_fd, 2)
            os.close(output_fd)
            serving.Worker(dict(self.spec, control_fd=control_fd)).run(self.app)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)

    def child_exited(self, watcher) -> None:
        """Runs in the hub (a child watcher): report the exit from a greenlet."""
        returncode = os.waitstatus_to_exitcode(watcher.rstatus)
        gevent.spawn(self._report_exit, watcher.rpid, returncode)

    def _report_exit(self, pid: int, returncode: int) -> None:
        try:
            self.channel.send({"event": "exited", "pid": pid, "returncode": returncode})
        except OSError:
            pass

    def exit_now(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def main() -> None:
    spec = json.loads(os.environ.pop(serving.SPEC_VARIABLE))
    Preloader(spec).run()


if __name__ == "__main__":
    main()
