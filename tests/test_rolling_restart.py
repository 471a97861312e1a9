"""Rolling restarts onto a new release under load, and a broken release that must not land.

Releases live side by side with their own virtualenvs, as a deploy lays them out:
releases/A, releases/B, releases/C and a `current` symlink swapped atomically.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import swap_current
from loadgen import Load

APP = '''
import os, sys
{extra}
def application(environ, start_response):
    if environ["PATH_INFO"] == "/python":
        body = sys.executable.encode()
    else:
        body = b"release {name}"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def make_release(root: Path, name: str, make_venv, extra: str = "") -> Path:
    release = root / "releases" / name
    release.mkdir(parents=True)
    (release / "wsgi.py").write_text(APP.format(name=name, extra=extra))
    make_venv(release / ".venv")
    return release


@pytest.fixture(scope="module")
def releases(tmp_path_factory, make_venv):
    root = tmp_path_factory.mktemp("app")
    made = {
        "A": make_release(root, "A", make_venv),
        "B": make_release(root, "B", make_venv),
        "C": make_release(root, "C", make_venv,
                          extra='raise RuntimeError("release C is broken at import")'),
    }
    swap_current(root, made["A"])
    return root, made


def run_loads(server, seconds: float) -> list[Load]:
    return [Load("127.0.0.1", server.port, clients=4, mode=mode, max_seconds=seconds).start()
            for mode in ("keepalive", "close")]


def test_rolling_restart_and_broken_release_under_load(railcar, releases):
    root, made = releases
    server = railcar().start(str(root / "current"), "--workers", "2", workers_ready=2)
    assert server.get("/").text == "release A"
    old_pids = {w["pid"] for w in server.workers()}

    # A -> B under load: nothing fails, everything after the restart is B, on B's venv.
    loads = run_loads(server, 60)
    time.sleep(1.5)
    swap_current(root, made["B"])
    began = time.monotonic()
    result = server.cli("restart")
    restarted_at = time.monotonic()
    took = restarted_at - began
    assert result.returncode == 0, result.stderr
    time.sleep(1.5)
    for load in loads:
        load.stop()
        assert load.failures() == [], load.failures()[:3]
        after = load.started_after(restarted_at)
        assert after, "no requests after the restart"
        assert {o.body for o in after} == {b"release B"}
    total = sum(len(load.outcomes) for load in loads)
    print(f"A->B: {total} requests, 0 failed, restart took {took:.2f} s")
    assert total > 100
    workers = server.workers()
    assert len(workers) == 2
    assert not old_pids & {w["pid"] for w in workers}
    assert {w["release"] for w in workers} == {str(made["B"])}
    assert server.get("/python").text == str(made["B"] / ".venv" / "bin" / "python")

    # B -> C (raises at import) under load: restart fails with C's traceback, B keeps serving.
    b_pids = {w["pid"] for w in workers}
    loads = run_loads(server, 60)
    time.sleep(1.0)
    swap_current(root, made["C"])
    result = server.cli("restart")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError: release C is broken at import" in result.stderr
    time.sleep(1.0)
    for load in loads:
        load.stop()
        assert load.failures() == [], load.failures()[:3]
        assert {o.body for o in load.outcomes} == {b"release B"}
    assert {w["pid"] for w in server.workers()} == b_pids
    status = server.status()["apps"][0]
    assert status["last_restart"]["ok"] is False
    assert "release C is broken" in status["last_restart"]["error"]
    swap_current(root, made["B"])
    server.stop()


def test_restart_txt_and_sighup_replace_workers(railcar, releases):
    root, made = releases
    swap_current(root, made["A"])
    server = railcar().start(str(root / "current"), "--workers", "2", workers_ready=2)
    first = {w["pid"] for w in server.workers()}

    (made["A"] / "tmp").mkdir(exist_ok=True)
    (made["A"] / "tmp" / "restart.txt").touch()
    second = wait_new_workers(server, first)

    server.proc.send_signal(1)  # SIGHUP
    wait_new_workers(server, second)
    assert server.get("/").text == "release A"
    server.stop()


def wait_new_workers(server, old: set[int]) -> set[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pids = {w["pid"] for w in server.workers()}
        if len(pids) == 2 and not pids & old and len(server.workers(state=None)) == 2:
            return pids
        time.sleep(0.2)
    raise AssertionError(f"workers were not replaced: {server.log()[-3000:]}")
