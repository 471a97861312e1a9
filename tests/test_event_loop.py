"""event_loop: the event loop of the workers (and preloaders). auto (the default): epoll,
with sleeps that end on time (railcar.precise_sleep: a timerfd armed for the earliest
sleep); epoll: gevent's own (railcar.eventloop); GEVENT_BACKEND in the app's environment
wins. What is asserted is what each worker runs, as the worker itself sees
it (its loop's backend, its time.sleep, its open timerfds) and as `status --json` and the
log tell it, never a latency: that a sleep ends on time follows from the timerfd."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import railcar_command, wait_for, write_app

HERE = Path(__file__).resolve().parent
# What the app sees: its loop's backend (libev's word), who its time.sleep is, and how
# many timerfds it has open. It sleeps at import too, in the preloader with smart spawning:
# a forked worker must not keep the preloader's timerfd.
# The apps' count of the timerfds their worker has open.
TIMERFDS = '''
import os
def timerfds():
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += "timerfd" in os.readlink("/proc/self/fd/" + name)
        except OSError:
            pass
    return count
'''
APP = TIMERFDS + '''
import time
import gevent
time.sleep(0.001)
def application(environ, start_response):
    time.sleep(0.001)
    body = f"{gevent.get_hub().loop.backend} {time.sleep.__module__} {timerfds()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''
IO_URING_SETUP = 425
TIMERFD_CREATE = 283     # x86-64
# io_uring_setup (timerfd_create) fails with EPERM in the master and everything it starts.
WITHOUT_IO_URING = [sys.executable, str(HERE / "seccomp_deny.py"), str(IO_URING_SETUP), "--"]
WITHOUT_TIMERFD = [sys.executable, str(HERE / "seccomp_deny.py"), str(TIMERFD_CREATE), "--"]


def io_uring_available() -> bool:
    """Whether this machine lets a process set up an io_uring (the kernel, its
    io_uring_disabled switch, a seccomp filter around the tests): io_uring_setup(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(ctypes.c_long(IO_URING_SETUP), ctypes.c_uint(1), params)
    if fd < 0:
        return False
    os.close(fd)
    return True


HAS_IO_URING = io_uring_available()
needs_io_uring = pytest.mark.skipif(not HAS_IO_URING, reason="io_uring refused on this host")
needs_seccomp = pytest.mark.skipif(platform.machine() != "x86_64",
                                   reason="the seccomp helper's filter is for x86-64")
# What a worker says for each backend: loop backend, time.sleep's module, timerfds open.
PRECISE = "epoll railcar.precise_sleep 1"
GEVENTS = "epoll gevent.hub 0"
IO_URING = "linux_iouring gevent.hub 1"     # libev's io_uring backend has a timerfd of its own


def answers(server, count: int) -> set[str]:
    """What `count` requests' workers say, after checking that `status --json` and the log
    name the same backend for every ready worker."""
    workers = server.workers()
    seen = {server.get("/").text for _ in range(count)}
    said = {"io_uring": "linux_iouring"}
    assert {text.split()[0] for text in seen} == \
        {said.get(w["event_loop"], w["event_loop"]) for w in workers}, (seen, workers)
    log = server.log()
    for worker in workers:
        assert f"worker {worker['pid']} ready (event loop {worker['event_loop']})" in log, log
    return seen


@pytest.mark.parametrize("args, expected", [
    ((), PRECISE),
    (("--spawn-method", "direct"), PRECISE),
    (("--event-loop", "auto"), PRECISE),
    (("--event-loop", "epoll"), GEVENTS),
    (("--event-loop", "epoll", "--spawn-method", "direct"), GEVENTS),
])
def test_workers_run_the_event_loop_of_the_setting(railcar, tmp_path, args, expected):
    app = write_app(tmp_path / "app", APP)
    server = railcar().start(str(app), "--workers", "2", *args, workers_ready=2)
    assert answers(server, 6) == {expected}
    if "direct" not in args:
        backend = expected.split()[0]
        assert f"event loop {backend})" in server.log().split("preloader", 1)[1]
    server.stop()


@pytest.mark.parametrize("env, expected", [
    ("GEVENT_BACKEND=epoll", GEVENTS),              # wins over the default (no timerfd)
    pytest.param("GEVENT_BACKEND=linux_iouring", IO_URING, marks=needs_io_uring),
])
def test_gevent_backend_in_the_apps_environment_wins(railcar, tmp_path, env, expected):
    app = write_app(tmp_path / "app", APP)
    server = railcar().start(str(app), "--workers", "1", "--env", env, "--event-loop", "epoll")
    assert answers(server, 2) == {expected}
    server.stop()


@needs_seccomp
@pytest.mark.parametrize("prefix, expected", [
    (WITHOUT_IO_URING, PRECISE),                    # the default never needed io_uring
    (WITHOUT_TIMERFD, "epoll railcar.precise_sleep 0"),   # no timerfd: gevent's sleeps
])
@pytest.mark.parametrize("spawn", ["smart", "direct"])
def test_the_default_serves_where_the_kernel_refuses_io_uring_or_timerfd(
        railcar, tmp_path, prefix, expected, spawn):
    app = write_app(tmp_path / "app", APP)
    server = railcar()
    server.prefix = prefix
    server.start(str(app), "--workers", "2", "--spawn-method", spawn, workers_ready=2)
    assert answers(server, 4) == {expected}
    restarted = server.cli("restart")        # and the new workers as well
    assert restarted.returncode == 0, restarted.stderr
    assert answers(server, 4) == {expected}
    server.stop()


def test_replaced_and_restarted_workers_keep_their_event_loop(railcar, tmp_path):
    """Workers replaced at max_requests and those of a rolling restart (forked by the same
    or a new preloader) each sleep on a timerfd of their own, as the first ones did."""
    app = write_app(tmp_path / "app", APP)
    server = railcar().start(str(app), "--workers", "2", "--max-requests", "5",
                             workers_ready=2)
    first = {w["pid"] for w in server.workers()}
    for _ in range(30):
        assert server.get("/").text == PRECISE
    wait_for(lambda: len(server.workers()) == 2 and not first & {w["pid"] for w in
                                                                 server.workers()},
             30, what="the first workers to be replaced")
    restarted = server.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    assert answers(server, 4) == {PRECISE}
    server.stop()


QUIET_APP = TIMERFDS + '''
import sys
def application(environ, start_response):
    body = f"{timerfds()} {'ctypes' in sys.modules}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def test_a_worker_whose_app_never_sleeps_has_no_timerfd_nor_ctypes(railcar, tmp_path):
    """railcar's own polls (accept balancing, the request-time watchdog: here both run)
    use gevent's sleep: precise sleeps cost nothing, in memory either, to an app that does
    not sleep."""
    app = write_app(tmp_path / "app", QUIET_APP)
    server = railcar().start(str(app), "--workers", "2", "--max-request-time", "2",
                             workers_ready=2)
    clients = [server.connect() for _ in range(8)]     # several per worker: balancing
    try:
        for _ in range(10):
            assert server.get("/").text == "0 False"
    finally:
        for client in clients:
            client.close()
    server.stop()


def test_a_bad_event_loop_is_refused_naming_the_setting(tmp_path):
    app = write_app(tmp_path / "app", APP)
    done = subprocess.run([*railcar_command(), "start", str(app), "--event-loop", "kqueue"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "event-loop" in done.stderr and "'epoll'" in done.stderr, done.stderr
