"""Lifecycle hooks (`--hooks-module`): each hook runs in the process the README names, which
the hooks module records (hook, pid, parent pid, uid, details) in a file; a failing post_fork
fails the boot like an import error; a failing on_starting fails the app's first boot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest
import requests

from accounts import accounts, needs_root, shared_dir, shared_venv  # noqa: F401 (fixtures)
from conftest import gone, wait_for

APP = '''
import time
def application(environ, start_response):
    if environ["PATH_INFO"] == "/sleep":
        time.sleep(float(environ["QUERY_STRING"] or 1))
    if environ["PATH_INFO"] == "/spin":
        spin_until = time.monotonic() + float(environ["QUERY_STRING"] or 1)
        while time.monotonic() < spin_until:     # computes without yielding
            pass
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''

HOOKS = '''
import json, os

LOG = os.environ["HOOKS_LOG"]
FAIL = os.environ.get("HOOKS_FAIL", "")


def record(hook, **details):
    line = json.dumps(dict(details, hook=hook, pid=os.getpid(), ppid=os.getppid(),
                           uid=os.getuid(), cwd=os.getcwd()))
    with open(LOG, "a") as log:
        log.write(line + "\\n")


def failing(hook):
    return os.path.exists(FAIL + "." + hook)


def on_starting(server):
    record("on_starting", app=server.app, release=server.release, workers=server.workers,
           binds=list(server.binds), master_pid=server.master_pid)
    if failing("on_starting"):
        raise RuntimeError("on_starting refuses: marker present")


def post_fork(worker):
    record("post_fork", worker_pid=worker.pid, app=worker.app, release=worker.release,
           preloaded=worker.preloaded)
    if failing("post_fork"):
        raise RuntimeError("post_fork refuses: marker present")


def worker_exit(worker):
    record("worker_exit", worker_pid=worker.pid)


def on_timeout(worker, environ, stack):
    record("on_timeout", worker_pid=worker.pid, path=environ["PATH_INFO"],
           query=environ["QUERY_STRING"], stack=stack)
'''


def records(log: Path, hook: str | None = None) -> list[dict]:
    if not log.exists():
        return []
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    return [line for line in lines if hook is None or line["hook"] == hook]


@pytest.fixture
def hooked_app(tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "wsgi.py").write_text(APP)
    (app / "apphooks.py").write_text(HOOKS)
    return app, tmp_path / "hooks.log", str(tmp_path / "fail")


def start(railcar, app: Path, log: Path, fail: str, *args: str):
    return railcar().start(str(app), "--hooks-module", "apphooks", "--workers", "2",
                           "--env", f"HOOKS_LOG={log}", "--env", f"HOOKS_FAIL={fail}", *args,
                           workers_ready=2)


@pytest.mark.parametrize("spawn_method", ["smart", "direct"])
def test_each_hook_runs_in_its_documented_process(railcar, hooked_app, spawn_method):
    app, log, fail = hooked_app
    server = start(railcar, app, log, fail, "--spawn-method", spawn_method,
                   "--max-request-time", "1")
    master = server.proc.pid
    first = {w["pid"] for w in server.workers()}
    release = str(app.resolve())

    # on_starting: once, first, in a child of the master that is neither it nor a worker,
    # in the release directory
    [starting] = records(log, "on_starting")
    assert records(log)[0]["hook"] == "on_starting"
    assert starting["ppid"] == master and starting["pid"] != master
    assert starting["pid"] not in first and gone(starting["pid"])
    assert starting["master_pid"] == master and starting["workers"] == 2
    assert starting["release"] == release and starting["cwd"] == release
    assert starting["binds"] == [f"127.0.0.1:{server.port}"]

    # post_fork: in each worker, before it served (the master saw it ready after)
    forks = records(log, "post_fork")
    assert {r["pid"] for r in forks} == first
    assert all(r["worker_pid"] == r["pid"] and r["release"] == release for r in forks)
    if spawn_method == "smart":       # forked by the preloader, a child of the master
        preloaders = {r["ppid"] for r in forks}
        assert len(preloaders) == 1 and master not in preloaders
        assert psutil.Process(preloaders.pop()).ppid() == master
        assert all(r["preloaded"] for r in forks)
    else:
        assert {r["ppid"] for r in forks} == {master}
        assert not any(r["preloaded"] for r in forks)

    # on_timeout: in the worker whose request ran past max_request_time, with its environ
    # and stack, after the 504
    response = requests.get(server.url + "/sleep", params="5", timeout=30)
    assert response.status_code == 504
    [timeout] = wait_for(lambda: records(log, "on_timeout"), 10, what="on_timeout")
    assert timeout["pid"] in first and timeout["worker_pid"] == timeout["pid"]
    assert timeout["path"] == "/sleep" and timeout["query"] == "5"
    assert "time.sleep" in timeout["stack"] and "wsgi.py" in timeout["stack"]

    # a rolling restart: new workers get post_fork, on_starting does not run again
    result = server.cli("restart")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: len(server.workers()) == 2, 60, what="two ready workers")
    second = {w["pid"] for w in server.workers()}
    assert {r["pid"] for r in records(log, "post_fork")} >= first | second
    assert len(records(log, "on_starting")) == 1

    # worker_exit: in every worker as it exited (retired by the restart, replaced after the
    # timeout, or stopped with the server)
    server.stop()
    exits = records(log, "worker_exit")
    assert all(r["worker_pid"] == r["pid"] for r in exits)
    assert {r["pid"] for r in exits} == {r["pid"] for r in records(log, "post_fork")}
    assert master not in {r["pid"] for r in records(log)}


def test_on_timeout_hears_of_a_request_computing_without_a_pause(railcar, hooked_app):
    """The CPU timer interrupts the request in its own greenlet (deadline.py): on_timeout
    still gets its environ and its stack, where it was computing."""
    app, log, fail = hooked_app
    server = start(railcar, app, log, fail, "--max-request-time", "1")
    response = requests.get(server.url + "/spin", params="8", timeout=30)
    assert response.status_code == 504
    [timeout] = wait_for(lambda: records(log, "on_timeout"), 10, what="on_timeout")
    assert timeout["path"] == "/spin" and timeout["query"] == "8"
    assert "spin_until" in timeout["stack"]
    assert timeout["pid"] in {r["pid"] for r in records(log, "post_fork")}
    server.stop()


def test_a_failing_post_fork_fails_the_boot_and_a_restart_aborts(railcar, hooked_app):
    app, log, fail = hooked_app
    server = start(railcar, app, log, fail)
    before = sorted(w["pid"] for w in server.workers())
    Path(fail + ".post_fork").touch()
    result = server.cli("restart")
    assert result.returncode == 1
    assert "post_fork refuses: marker present" in result.stderr
    assert "hook post_fork of apphooks" in result.stderr
    assert sorted(w["pid"] for w in server.workers()) == before
    assert server.get("/").text == "ok"
    assert "post_fork refuses: marker present" in server.log()   # traceback in the log


def test_a_failing_on_starting_fails_the_first_boot_until_it_passes(railcar, hooked_app):
    app, log, fail = hooked_app
    Path(fail + ".on_starting").touch()
    server = railcar().start(str(app), "--hooks-module", "apphooks",
                             "--env", f"HOOKS_LOG={log}", "--env", f"HOOKS_FAIL={fail}",
                             wait=False)
    error = wait_for(lambda: os.path.exists(server.admin_socket) and
                     server.status()["apps"][0]["error"], 30, what="the hook's error")
    assert "on_starting refuses: marker present" in error and "Traceback" in error
    assert not records(log, "post_fork")           # no worker started
    os.unlink(fail + ".on_starting")
    wait_for(lambda: len(server.workers()) == 2, 60, what="the app to boot after the hook passed")
    assert len(records(log, "on_starting")) >= 2
    assert server.get().text == "ok"
    server.stop()


def test_an_unimportable_hooks_module_is_a_boot_error(railcar, tmp_path):
    app = tmp_path / "app"
    app.mkdir()
    (app / "wsgi.py").write_text(APP)
    (app / "brokenhooks.py").write_text("import no_such_module_here\n")
    server = railcar().start(str(app), "--hooks-module", "brokenhooks", wait=False)
    error = wait_for(lambda: os.path.exists(server.admin_socket) and
                     server.status()["apps"][0]["error"], 30, what="the import error")
    assert "no_such_module_here" in error
    server.stop()


def test_a_hooks_module_name_is_checked(railcar, tmp_path):
    server = railcar()
    server.start(str(tmp_path), "--hooks-module", "not a module", wait=False)
    server.proc.wait(timeout=30)
    output = server.proc.stdout.read().decode() + server.log()
    assert server.proc.returncode != 0 and "--hooks-module" in output


@needs_root()
def test_under_a_root_master_on_starting_runs_as_the_app_account(railcar, accounts, shared_dir,
                                                                  shared_venv):
    """The master runs as root, the app as its account: on_starting (a one-shot process
    of the app's interpreter) runs as that account, like every worker."""
    account = accounts.user()
    app = shared_dir / "app"
    app.mkdir()
    (app / "wsgi.py").write_text(APP)
    (app / "apphooks.py").write_text(HOOKS)
    log = shared_dir / "hooks.log"
    log.touch()
    log.chmod(0o666)
    server = railcar()
    server.root_opt_in = False
    server.start(str(app), "--user", account.pw_name, "--python",
                 str(shared_venv / "bin" / "python"), "--hooks-module", "apphooks",
                 "--env", f"HOOKS_LOG={log}", "--env", f"HOOKS_FAIL={shared_dir}/fail",
                 "--workers", "2", workers_ready=2)
    server.stop()
    assert {r["hook"] for r in records(log)} == {"on_starting", "post_fork", "worker_exit"}
    assert {r["uid"] for r in records(log)} == {account.pw_uid}


# --- railcar.hooks in-process: what a module may define ---------------------------------

def test_hooks_a_module_does_not_define_do_nothing(tmp_path, monkeypatch):
    from railcar.hooks import HookFailed, Hooks

    (tmp_path / "onlyexit.py").write_text(
        "calls = []\ndef worker_exit(worker):\n    calls.append(worker)\n"
        "def on_timeout(worker, environ, stack):\n    raise ValueError('reporter down')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    hooks = Hooks("onlyexit")
    assert "post_fork" not in hooks and "worker_exit" in hooks
    hooks.run("post_fork", "w")                 # not defined: nothing happens
    assert hooks.call("worker_exit", "w")
    import onlyexit
    assert onlyexit.calls == ["w"]
    with pytest.raises(HookFailed) as failed:
        hooks.run("on_timeout", "w", {}, "")
    assert "hook on_timeout of onlyexit" in str(failed.value)
    assert "ValueError: reporter down" in str(failed.value)
    assert hooks.call("on_timeout", "w", {}, "") is False      # logged, not raised
    assert Hooks(None).functions == {}


def test_a_hook_that_is_not_callable_is_refused(tmp_path, monkeypatch):
    from railcar.hooks import Hooks

    (tmp_path / "badhooks.py").write_text("post_fork = 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TypeError, match="badhooks.post_fork is not callable"):
        Hooks("badhooks")
