"""The master process: owns the sockets, supervises every app's workers, serves the admin socket.

Runs in the master, on gevent (the CLI monkey-patches before importing this module).
Signal handlers only queue the signal; the main loop dispatches each to one `handle_<sig>`:
    HUP   rolling restart of every app
    TERM  graceful stop: workers finish in-flight requests (up to graceful_timeout)
    INT, QUIT  fast stop
    USR1  reopen log files (master and workers)
The pools' events (a worker or preloader exited, something to reconcile: pool.Wake) come
through the same queue; the pools that had events are reconciled once the queue is drained.
The loop also ticks once a second: `reconcile` and `supervise` (limits, dynamic pool) of each
app, and restart.txt checks. With `metrics_bind` the master also serves Prometheus
metrics (railcar.metrics).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Callable

import gevent
import gevent.queue

from . import __version__, envfile, logs, rundir, sockets, supervision
from .config import ServerConfig
from .control.server import ControlServer
from .pool import AppPool, RestartOutcome, Wake

TICK = 1.0
SIGNALS = {signal.SIGHUP: "hup", signal.SIGTERM: "term", signal.SIGINT: "int",
           signal.SIGQUIT: "quit", signal.SIGUSR1: "usr1"}


class Master:
    def __init__(self, config: ServerConfig, log, listeners: dict[str, object],
                 notify_systemd: Callable[..., None] = lambda *lines: None):
        """`notify_systemd(*lines)`: tells systemd (launcher.notify_systemd), or nobody."""
        self.config = config
        self.log = log
        self.notify_systemd = notify_systemd
        self.listeners = listeners          # address -> socket, bound before daemonizing
        self.pid = os.getpid()
        self.started_at = time.time()
        # Signals (by number) and the pools' events (pool.Wake, pool.Exited), in order.
        self.queue: gevent.queue.Queue = gevent.queue.Queue()
        self.stopping = False
        self.pools = [
            AppPool(app, [listeners[b] for b in app.binds], config.graceful_timeout, log,
                    notify=self.queue.put)
            for app in config.apps]
        self.control = ControlServer(config.admin_socket, self, log, group=config.admin_group)
        self.metrics = None
        if config.metrics_bind:
            from .metrics import MetricsServer     # prometheus-client only when asked for

            self.metrics = MetricsServer(config.metrics_bind, self, log)

    # --- lifecycle ------------------------------------------------------------------------
    def run(self, on_started=None) -> int:
        """Serve until stopped; returns the process exit status."""
        if self.metrics:
            self.metrics.start()
        self.control.start()
        self._write_pid_file()
        for sig in SIGNALS:
            gevent.signal_handler(sig, self.queue.put, sig)
        for app in self.config.apps:
            loose = app.env_file and envfile.loose_mode(app.env_file)
            if loose:
                self.log.warning("%s: env file %s may be read by other accounts (mode %04o): "
                                 "make it 0600", app.name, app.env_file, loose)
        self.log.info("railcar %s master %d serving %s", __version__, self.pid,
                      ", ".join(f"{p.app.name} on {' '.join(p.app.binds)}" for p in self.pools))
        for pool in self.pools:
            pool.reconcile()
        if on_started:
            gevent.spawn(on_started, self)
        next_tick = time.monotonic() + TICK
        while not self.stopping:
            try:
                item = self.queue.get(timeout=max(next_tick - time.monotonic(), 0))
            except gevent.queue.Empty:
                self.tick()
                next_tick = time.monotonic() + TICK
                continue
            self.dispatch(item)
        return 0

    def dispatch(self, item) -> None:
        """One item of the queue, then every item queued behind it; the pools that had
        events are reconciled once, after the queue is drained."""
        woken: list[AppPool] = []
        while True:
            if isinstance(item, Wake):
                if item.pool not in woken:
                    woken.append(item.pool)
            else:
                getattr(self, "handle_" + SIGNALS[item])()
            if self.stopping or self.queue.empty():
                break
            item = self.queue.get()
        if not self.stopping:
            for pool in woken:
                pool.reconcile()

    def tick(self) -> None:
        for pool in self.pools:
            if pool.restart_txt_touched():
                self.log.info("%s: tmp/restart.txt touched", pool.app.name)
                gevent.spawn(pool.restart)
            pool.reconcile()
            pool.supervise()

    def shutdown(self, graceful: bool) -> None:
        """Stop every app's workers, then release the sockets, pid file and admin socket."""
        if self.stopping:
            return
        self.stopping = True
        self.log.info("%s stop", "graceful" if graceful else "fast")
        timeout = self.config.graceful_timeout if graceful else 5.0
        if graceful:
            # A unit's TimeoutStopSec= comes from the settings it was rendered with (the
            # defaults, for the deploy's); this stop waits as long as ours say, and systemd
            # gives it that much past TimeoutStopSec= when asked (systemd 236 and later).
            longest = max(pool.retire_timeout() for pool in self.pools)
            self.notify_systemd("STOPPING=1", "EXTEND_TIMEOUT_USEC=%d" % (
                (longest + supervision.SYSTEMD_MARGIN) * 1_000_000))
        gevent.joinall([gevent.spawn(p.stop, graceful, timeout) for p in self.pools])
        for address, sock in self.listeners.items():
            sockets.close(address, sock)
        self.control.stop()
        if self.metrics:
            self.metrics.stop()
        self._remove_pid_file()
        self.log.info("master %d stopped", self.pid)

    # --- signal handlers: one short method each -------------------------------------------
    def handle_hup(self) -> None:
        self.log.info("SIGHUP: rolling restart of every app")
        gevent.spawn(self.restart, None)

    def handle_term(self) -> None:
        self.shutdown(graceful=True)

    def handle_int(self) -> None:
        self.shutdown(graceful=False)

    handle_quit = handle_int

    def handle_usr1(self) -> None:
        logs.reopen(self.log)
        for pool in self.pools:
            pool.tell_all("reopen_logs")
        self.log.info("log files reopened")

    # --- what the admin socket asks for ---------------------------------------------------
    def find_pools(self, name: str | None) -> list[AppPool]:
        if name is None:
            return list(self.pools)
        pools = [p for p in self.pools if p.app.name == name]
        if not pools:
            known = ", ".join(p.app.name for p in self.pools)
            raise LookupError(f"no app named {name!r} (apps: {known})")
        return pools

    def restart(self, name: str | None, progress=None) -> list[tuple[AppPool, RestartOutcome]]:
        """Rolling restart of one app or all, concurrently; blocks until every one is done.
        `progress(text)` hears how canaries go."""
        pools = self.find_pools(name)
        jobs = [gevent.spawn(pool.restart, progress) for pool in pools]
        gevent.joinall(jobs)
        return list(zip(pools, [job.value for job in jobs]))

    def request_stop(self, graceful: bool) -> None:
        self.queue.put(signal.SIGTERM if graceful else signal.SIGQUIT)

    # --- pid file -------------------------------------------------------------------------
    def _write_pid_file(self) -> None:
        """Written to a new file (never through a symlink or an existing file someone
        planted), then renamed over the pid file."""
        if self.config.pid_file:
            tmp = self.config.pid_file + ".tmp"
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{self.pid}\n")
            os.replace(tmp, self.config.pid_file)

    def _remove_pid_file(self) -> None:
        if self.config.pid_file:
            try:
                with open(self.config.pid_file) as handle:
                    if handle.read().strip() == str(self.pid):
                        os.unlink(self.config.pid_file)
            except OSError:
                pass


def bind_all(config: ServerConfig) -> dict[str, object]:
    """Bind every app's addresses; on any failure close what was bound and re-raise.
    The run dir, if an app's socket is there, is created or verified first (rundir): mode
    0755, as the web server must reach the sockets (each 0660, its group the web server's)."""
    if any(os.path.dirname(b[len("unix:"):]) == config.run_dir
           for app in config.apps for b in app.binds if b.startswith("unix:")):
        rundir.ensure(config.run_dir, mode=0o755)
    bound: dict[str, object] = {}
    try:
        for app in config.apps:
            owner = (app.run_as.uid if app.run_as else -1,
                     -1 if app.socket_group is None else app.socket_group)
            for address in app.binds:
                bound[address] = sockets.bind(address, owner=owner)
    except sockets.BindError:
        for address, sock in bound.items():
            sockets.close(address, sock)
        raise
    return bound
