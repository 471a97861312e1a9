"""Worker process: `python -m railcar.worker`, started by the master with the app's interpreter.

Runs in the worker. Contract with the master (see railcar.channel for the framing):
- A worker is started directly (this module) or forked by a preloader (railcar.preloader)
  that imported the app already; both run the same Worker.
- The environment variable RAILCAR_WORKER holds a JSON spec: app, module, release,
  listen_fds, control_fd, limits, access_log, access_log_format, graceful_timeout, health,
  hooks_module, gc_freeze, boot_nice, event_loop, tls ({"certfile", "keyfile"} or null),
  balance_fd (the app's table of open-connection counts, railcar.balance, or null).
- With spec "event_loop" "auto" sleeps are made precise (railcar.eventloop,
  railcar.precise_sleep) right after monkey-patching. "ready" names the loop's backend
  ("event_loop").
- gevent monkey-patches the process before the app is imported. With spec "boot_nice" a
  direct worker does both at a lower CPU priority and restores it once its health check
  passed, before it serves (railcar.priority; a preloader did the same before forking).
- The worker sends {"event": "ready"} only after the app imported and is callable, passed
  its health check (spec "health", see railcar.health) and the listeners accept; if the
  import fails it sends {"event": "boot_error", "error": traceback} and exits 1. The health
  check runs in-process before the worker touches the listeners: {"event": "health_check"}
  when it starts, {"event": "health_error", "error": why} and exit 1 when it fails.
- The app's hooks (spec "hooks_module", railcar.hooks): the module is imported with the app
  (failing to import it is a boot error); post_fork runs before the health check (raising is
  a boot error), worker_exit once the worker stopped serving, on_timeout in a greenlet of
  its own after a request past max_request_time got its 504.
- A call may carry keyword arguments ({"call": NAME, "id": N, "args": {...}}).
- `take_over` {"connections": N} (from the master just before it retires another worker of
  the app, which holds N connections): accept the next N connections, for a moment, without
  deferring them to idler workers (the retiring worker's clients reconnect together; see
  HTTPServer.take_over).
- SIGTERM (or the master's channel closing): retire gracefully, then exit 0.
  SIGINT/SIGQUIT: exit at once. SIGUSR2: write the stack of every thread to stderr (works even
  when the event loop is stuck in CPU-bound code).
- A request past max_request_time makes the worker ask to be replaced: `stats` then carries
  "replace": reason, which the master acts on. A request computing without a pause is found
  too: with max_request_time on, the worker runs a CPU-time timer (ITIMER_VIRTUAL, SIGVTALRM)
  whose handler interrupts it (railcar.http.deadline).
"""

from railcar import priority  # noqa: I001  (the boot's CPU priority, before its imports)

priority.lower_from_spec()  # a direct worker; in a preloader it did so already

from railcar import eventloop  # noqa: E402
from railcar.patching import patch_all  # noqa: E402

patch_all()
eventloop.after_patch()

import faulthandler  # noqa: E402
import importlib  # noqa: E402  (the app and everything below must see patched modules)
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.ssl  # noqa: E402

from railcar import __version__, health, logs, proctitle, tls  # noqa: E402
from railcar.hooks import HookFailed, Hooks, WorkerInfo  # noqa: E402
from railcar.channel import Channel  # noqa: E402
from railcar.http import HTTPServer, Limits  # noqa: E402
from railcar.balance import LoadTable  # noqa: E402

SPEC_VARIABLE = "RAILCAR_WORKER"
BACKTRACES_MAX = 2 * 1024 * 1024


def load_app(module_spec: str):
    """Import MODULE[:CALLABLE]; without a callable name, `application` then `app`."""
    module_name, _, attribute = module_spec.partition(":")
    module = importlib.import_module(module_name)
    names = [attribute] if attribute else ["application", "app"]
    for name in names:
        app = getattr(module, name, None)
        if app is not None:
            if not callable(app):
                raise TypeError(f"{module_name}:{name} is not callable")
            return app
    raise LookupError(f"module {module_name} ({module.__file__}) has no "
                      + " or ".join(repr(n) for n in names))


class AccessLog:
    """One line per request to stderr ('-', relayed by the master) or to a file, opened
    never through a symlink (railcar.logs.open_log_file) and opened again by `reopen()`
    (USR1: after logrotate moved it). A file that cannot be reopened keeps the old one."""

    def __init__(self, target: str):
        self.target = target
        self.stream = sys.stderr if target == "-" else logs.open_log_file(target, True)

    def reopen(self) -> None:
        if self.target != "-":
            try:
                stream = logs.open_log_file(self.target, True)
            except logs.LogFileError as exc:
                sys.stderr.write(f"railcar: cannot reopen the access log: {exc}\n")
                return
            old, self.stream = self.stream, stream
            old.close()

    def __call__(self, line: str) -> None:
        self.stream.write(line + "\n")


def boot_failed(channel: Channel, error: str) -> None:
    """Tell stderr and the master ({"event": "boot_error"}) why we cannot serve; exit 1."""
    sys.stderr.write(error)
    sys.stderr.flush()
    channel.send({"event": "boot_error", "error": error})
    sys.exit(1)


def import_release(spec: dict, channel: Channel) -> tuple:
    """Enter the release (cwd and first on sys.path) and import its app, then its hooks
    module if it has one (so a preloader's workers share it too); (app, Hooks).

    Shared by the worker and the preloader. If an import fails, the traceback goes to stderr
    and to the master as {"event": "boot_error"}, and the process exits 1.
    """
    release = spec["release"]
    os.chdir(release)
    sys.path[:] = [release] + [p for p in sys.path if p not in ("", release)]
    try:
        return load_app(spec["module"]), Hooks(spec.get("hooks_module"))
    except BaseException:
        boot_failed(channel, traceback.format_exc())


def import_app(spec: dict, channel: Channel):
    """The preloader's import_release: it keeps the app for the workers it forks, which
    take the hooks' functions from the module it imported."""
    return import_release(spec, channel)[0]


class Worker:
    """The serving part of a worker: run by `python -m railcar.worker` after importing the
    app, and by a worker the preloader forked, with the app the preloader imported."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.channel = Channel(socket.socket(fileno=spec["control_fd"]))
        self.server = None
        self.access_log = None
        self.done = gevent.event.Event()
        self.retiring = False
        self.replace_reason = None   # set when this worker should be replaced
        self.hooks = Hooks()
        self.info = None             # the WorkerInfo the hooks are given

    def boot(self, app) -> None:
        """Pass the health check, serve `app` on the inherited listeners, then tell the master
        we are ready."""
        extra_environ = {"SERVER_SOFTWARE": f"railcar/{__version__}"}
        self.check_health(app, extra_environ)
        priority.restore()  # a direct worker's boot is over (forked ones inherit it restored)
        tls_context = self.tls_context()
        listeners = [socket.socket(fileno=fd) for fd in self.spec["listen_fds"]]
        if self.spec.get("access_log"):
            self.access_log = AccessLog(self.spec["access_log"])
        self.server = HTTPServer(
            listeners, app, limits=Limits(**self.spec["limits"]), access_log=self.access_log,
            base_environ=extra_environ, on_timeout=self.request_timed_out,
            tls_context=tls_context,
            access_log_format=self.spec.get("access_log_format", "text"),
            load=self.load_table())
        self.server.start()
        gevent.signal_handler(signal.SIGTERM, self.retire)
        gevent.signal_handler(signal.SIGINT, self.exit_now)
        gevent.signal_handler(signal.SIGQUIT, self.exit_now)
        faulthandler.register(signal.SIGUSR2, all_threads=True)
        self.channel.send({"event": "ready", "pid": os.getpid(), "python": sys.executable,
                           "release": self.spec["release"], "event_loop": eventloop.backend()})

    def load_table(self):
        """This worker's slot in the app's shared open-connection counts (spec
        "balance_fd"), or None: then it accepts as if it were alone, by timing."""
        fd = self.spec.get("balance_fd")
        if fd is None:
            return None
        try:
            return LoadTable(fd)
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"railcar: connection balancing off in this worker: {exc}\n")
            return None

    def check_health(self, app, extra_environ: dict) -> None:
        """Run the app's health check (if it has one) before touching the listeners; if it
        fails, say why on stderr and to the master ({"event": "health_error"}) and exit 1."""
        check = self.spec.get("health")
        if not check:
            return
        self.channel.send({"event": "health_check"})
        problem = health.check(app, check, extra_environ)
        if problem:
            sys.stderr.write(problem + "\n")
            sys.stderr.flush()
            self.channel.send({"event": "health_error", "error": problem})
            sys.exit(1)

    def tls_context(self):
        """The TLS context of the app's TCP binds (spec "tls"), loaded now from the files, so
        that every new worker serves the certificate as it is on disk. A certificate or key
        that cannot be loaded fails the boot like an import error, naming the file."""
        files = self.spec.get("tls")
        if not files:
            return None
        try:
            return tls.server_context(files["certfile"], files["keyfile"], gevent.ssl)
        except tls.TLSError as exc:
            boot_failed(self.channel, f"TLS: {exc}\n")

    def retire(self) -> None:
        if not self.retiring:
            self.retiring = True
            gevent.spawn(self._retire)

    def _retire(self) -> None:
        self.server.retire(grace=self.spec["graceful_timeout"])
        self.done.set()

    def exit_now(self) -> None:
        self.server.stop()
        self.done.set()

    def serve_channel(self) -> None:
        """Answer the master's calls; the channel closing means the master is gone."""
        for message in self.channel.messages():
            handler = getattr(self, "call_" + str(message.get("call")), None)
            args = message.get("args") or {}
            try:
                result = handler(**args) if handler \
                    else {"error": f"unknown call {message.get('call')!r}"}
            except TypeError as exc:    # arguments this call does not take
                result = {"error": str(exc)}
            if "id" in message:
                self.channel.send({"reply": message["id"], "result": result})
        self.retire()

    def request_timed_out(self, description: str, environ: dict, stack: str) -> None:
        if self.replace_reason is None:
            self.replace_reason = "max_request_time: " + description
        if "on_timeout" in self.hooks:
            gevent.spawn(self.hooks.call, "on_timeout", self.info, environ, stack)

    def call_stats(self) -> dict:
        stats = self.server.stats()
        if self.replace_reason:
            stats["replace"] = self.replace_reason
        return stats

    def call_take_over(self, connections: int | None = None) -> dict:
        """A retiring worker's clients (`connections` of them) are about to reconnect:
        accept them at once (HTTPServer.take_over)."""
        self.server.take_over(connections)
        return {}

    def call_requests(self) -> dict:
        return {"requests": self.server.requests_in_flight()}

    def call_reopen_logs(self) -> dict:
        if self.access_log:
            self.access_log.reopen()
        return {}

    def call_backtraces(self) -> dict:
        # Imported here, not with the worker: gevent.util brings pprint, dataclasses and
        # inspect, which a worker would otherwise carry only for this rare call.
        import gevent.util

        # Cut to what the master takes from a worker (railcar.channel.MAX_LINE).
        text = "\n".join(gevent.util.format_run_info())
        if len(text) > BACKTRACES_MAX:
            text = text[:BACKTRACES_MAX] + f"\n[... {len(text) - BACKTRACES_MAX} more characters]"
        return {"text": text}

    def run(self, app=None) -> None:
        """Serve until retired or stopped; imports the app first unless given one (by the
        preloader that forked us)."""
        preloaded = app is not None
        if preloaded:   # the preloader imported the hooks module: only its functions are taken
            self.hooks = Hooks(self.spec.get("hooks_module"))
        else:
            app, self.hooks = import_release(self.spec, self.channel)
        self.info = WorkerInfo(pid=os.getpid(), app=self.spec.get("app", ""),
                               release=self.spec["release"], preloaded=preloaded)
        proctitle.set_title("worker", self.info.app, self.info.release)
        try:
            self.hooks.run("post_fork", self.info)
        except HookFailed as failure:
            boot_failed(self.channel, str(failure))
        self.boot(app)
        gevent.spawn(self.serve_channel)
        self.done.wait()
        self.hooks.call("worker_exit", self.info)
        sys.stdout.flush()
        sys.stderr.flush()


def main() -> None:
    spec = json.loads(os.environ.pop(SPEC_VARIABLE))
    Worker(spec).run()


if __name__ == "__main__":
    main()
