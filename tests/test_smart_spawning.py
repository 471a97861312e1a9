"""Smart spawning: a preloader per release forks the workers of the Flask example.

Releases are copies of examples/flaskapp side by side (releases/A, B, a broken C) with a
`current` symlink, run on the test interpreter (which has Flask). Spawn times and memory of
both spawn methods are measured and printed (pytest -s shows them).
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import psutil
import pytest

from conftest import copy_example, gone, swap_current, wait_for, write_app
from loadgen import Load
from railcar.channel import Channel

MARKER = '\n@app.get("/release")\ndef release():\n    return "release {name}"\n'
WORKERS = 4
RESTART_BOUND = 2.0


def make_release(root: Path, name: str, broken: bool = False) -> Path:
    release = copy_example("flaskapp", root / "releases" / name)
    with open(release / "wsgi.py", "a") as handle:
        handle.write(MARKER.format(name=name))
        if broken:
            handle.write('raise RuntimeError("release C is broken at import")\n')
    return release


@pytest.fixture
def releases(tmp_path):
    root = tmp_path / "app"
    made = {name: make_release(root, name, broken=name == "C") for name in "ABC"}
    swap_current(root, made["A"])
    return root, made


def family(master_pid: int) -> tuple[list[psutil.Process], list[psutil.Process]]:
    """(preloaders, workers) under the master, by command line."""
    preloaders, workers = [], []
    for proc in psutil.Process(master_pid).children(recursive=True):
        try:
            cmdline = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        preloader = "railcar.preloader" in cmdline or cmdline.startswith("railcar: preloader")
        if preloader and proc.ppid() == master_pid:
            preloaders.append(proc)
        else:
            workers.append(proc)
    return preloaders, workers


def memory(pids: list[int]) -> dict[str, float]:
    """Mean per-worker RSS, and USS/PSS where psutil can read them, in MiB."""
    totals: dict[str, float] = {}
    for pid in pids:
        proc = psutil.Process(pid)
        try:
            info = proc.memory_full_info()._asdict()
        except (psutil.AccessDenied, AttributeError):
            info = proc.memory_info()._asdict()
        for key in ("rss", "uss", "pss"):
            if key in info:
                totals[key] = totals.get(key, 0.0) + info[key] / 2**20
    return {key: value / len(pids) for key, value in totals.items()}


def restart_bound() -> float:
    """2 s; more only when the machine is busier than it has cores."""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    return RESTART_BOUND if load < cores else RESTART_BOUND * (1 + load / cores)


def test_channel_passes_file_descriptors():
    left, right = socket.socketpair()
    sender, receiver = Channel(left), Channel(right, max_fds=2)
    read_end, write_end = os.pipe()
    try:
        sender.send({"call": "fork", "fds": 2}, [read_end, write_end])
        message = receiver.receive()
        got = receiver.take_fds(message["fds"])
        assert len(got) == 2
        os.write(got[1], b"through")
        assert os.read(read_end, 16) == b"through"
        for fd in got:
            os.close(fd)
    finally:
        os.close(read_end)
        os.close(write_end)
        sender.close()
        receiver.close()


@pytest.mark.parametrize("method", ["direct", "smart"])
def test_rolling_restart_of_flask_workers(railcar, releases, method):
    root, made = releases
    began = time.monotonic()
    server = railcar().start(str(root / "current"), "--workers", str(WORKERS),
                             "--spawn-method", method, workers_ready=WORKERS)
    boot = time.monotonic() - began
    assert server.get("/release").text == "release A"
    preloaders, _ = family(server.proc.pid)
    assert len(preloaders) == (1 if method == "smart" else 0)
    old_pids = {w["pid"] for w in server.workers()}
    before = memory(sorted(old_pids))

    loads = [Load("127.0.0.1", server.port, clients=2, mode=mode, path="/release",
                  max_seconds=60).start() for mode in ("keepalive", "close")]
    time.sleep(0.5)
    swap_current(root, made["B"])
    began = time.monotonic()
    result = server.cli("restart")
    took = time.monotonic() - began
    restarted_at = time.monotonic()
    assert result.returncode == 0, result.stderr
    time.sleep(0.5)
    for load in loads:
        load.stop()
        assert load.failures() == [], load.failures()[:3]
        assert {o.body for o in load.started_after(restarted_at)} == {b"release B"}

    workers = server.workers()
    assert len(workers) == WORKERS
    assert not old_pids & {w["pid"] for w in workers}
    assert {w["release"] for w in workers} == {str(made["B"])}
    assert server.get("/release").text == "release B"
    after = memory([w["pid"] for w in workers])
    spawn = sum(w["ready_at"] - w["started_at"] for w in workers) / len(workers)
    print(f"\n{method}: start of {WORKERS} workers {boot:.2f} s, rolling restart {took:.2f} s, "
          f"spawn to ready {spawn * 1000:.0f} ms per worker, "
          "per worker " + ", ".join(f"{k.upper()} {v:.1f} MiB" for k, v in after.items())
          + f" (before the restart: RSS {before['rss']:.1f} MiB)")
    if method == "smart":
        preloaders, forked = family(server.proc.pid)
        assert len(preloaders) == 1, "the old release's preloader is stopped"
        assert preloaders[0].cwd() == str(made["B"])
        assert {p.pid for p in forked} == {w["pid"] for w in workers}
        assert {p.ppid() for p in forked} == {preloaders[0].pid}
        assert took < restart_bound(), f"rolling restart took {took:.2f} s"
    server.stop()


def test_broken_release_aborts_a_smart_restart(railcar, releases):
    root, made = releases
    server = railcar().start(str(root / "current"), "--workers", "2",
                             "--spawn-method", "smart", workers_ready=2)
    pids = {w["pid"] for w in server.workers()}
    (preloader,), _ = family(server.proc.pid)

    swap_current(root, made["C"])
    result = server.cli("restart")
    assert result.returncode != 0
    assert "preloader" in result.stderr
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: release C is broken at import" in result.stderr
    assert {w["pid"] for w in server.workers()} == pids
    assert server.get("/release").text == "release A"

    # A crash respawn forks from the live preloader of the release that serves.
    swap_current(root, made["A"])
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(server.workers()) == 2 and victim not in
             {w["pid"] for w in server.workers()}, 30, what="a respawned worker")
    new_pid = ({w["pid"] for w in server.workers()} - pids).pop()
    assert psutil.Process(new_pid).ppid() == preloader.pid
    assert "exited unexpectedly (killed by SIGKILL)" in server.log()
    server.stop()


@pytest.mark.parametrize("how", ["stop", "master death"])
def test_no_preloader_or_worker_outlives_the_master(railcar, releases, how):
    root, _ = releases
    server = railcar().start(str(root / "current"), "--workers", "2",
                             "--spawn-method", "smart", workers_ready=2)
    preloaders, workers = family(server.proc.pid)
    assert len(preloaders) == 1 and len(workers) == 2
    if how == "stop":
        result = server.cli("stop")
        assert result.returncode == 0, result.stderr
        server.proc.wait(timeout=60)
    else:
        server.proc.kill()
        server.proc.wait(timeout=10)
    for proc in preloaders + workers:
        wait_for(lambda: gone(proc.pid), 30, what=f"{proc.pid} to exit after {how}")


DIES_AFTER_FORK = '''import os
os.register_at_fork(after_in_child=lambda: os._exit(3))

def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


def test_worker_gone_before_the_master_looks_is_a_boot_failure_with_its_cause(railcar, tmp_path):
    """A forked worker that exits at once is reaped by its preloader, often before the master
    has read the fork's answer: the failure still names the worker and its exit status."""
    app = write_app(tmp_path / "dies", DIES_AFTER_FORK)
    server = railcar().start(str(app), "--workers", "1", wait=False)
    wait_for(lambda: server.log().count("failed to boot") >= 3, 30,
             what="three boot failures")
    failures = [line for line in server.log().splitlines() if "failed to boot" in line]
    assert all("exit status 3" in line for line in failures), failures
    assert "worker None" not in server.log()
    assert "does not exist" not in server.log()
    server.stop()
