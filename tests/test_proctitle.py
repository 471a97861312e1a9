"""Process titles: with setproctitle importable (the titles extra, in this run's venv) `ps`
shows `railcar: master [ARGS]`, `railcar: preloader APP RELEASE` and `railcar: worker APP
RELEASE`; an app venv without it runs its workers all the same, under their command line."""

from __future__ import annotations

import shlex
import subprocess

import psutil
import pytest

from conftest import root_opt_in, wait_for

APP = '''
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
'''


def ps_args(pid: int) -> str:
    """The process's title as `ps` shows it (its args column)."""
    result = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(pid)], capture_output=True,
                            text=True, timeout=10)
    return result.stdout.strip()


@pytest.fixture
def release(tmp_path):
    """APP_ROOT/current -> releases/20261129T101500Z-abc1234 (a deploy's layout)."""
    directory = tmp_path / "releases" / "20261129T101500Z-abc1234"
    directory.mkdir(parents=True)
    (directory / "wsgi.py").write_text(APP)
    (tmp_path / "current").symlink_to(directory)
    return tmp_path / "current"


@pytest.mark.parametrize("spawn_method", ["smart", "direct"])
def test_ps_shows_each_role_app_and_release(railcar, release, spawn_method):
    server = railcar().start(str(release), "--name", "shop", "--workers", "2",
                             "--spawn-method", spawn_method, workers_ready=2)
    master = server.proc.pid
    args = ["start", str(release), "--name", "shop", "--workers", "2", "--spawn-method",
            spawn_method, *root_opt_in([]), "--port", str(server.port),
            "--admin-socket", server.admin_socket, "--log-file", str(server.log_file)]
    assert ps_args(master) == f"railcar: master [{' '.join(args)}]"
    workers = [w["pid"] for w in server.workers()]
    for pid in workers:
        assert ps_args(pid) == "railcar: worker shop 20261129T101500Z-abc1234"
    preloaders = [p.pid for p in psutil.Process(master).children()
                  if p.pid not in workers]
    if spawn_method == "smart":
        [preloader] = preloaders
        assert ps_args(preloader) == "railcar: preloader shop 20261129T101500Z-abc1234"
        assert {psutil.Process(pid).ppid() for pid in workers} == {preloader}
    else:
        assert preloaders == []
    server.stop()


def test_without_setproctitle_workers_keep_their_command_line(railcar, release, make_venv,
                                                              tmp_path):
    python = make_venv(tmp_path / "venv")       # railcar's core alone: no setproctitle
    server = railcar().start(str(release), "--python", str(python), "--workers", "2",
                             "--spawn-method", "direct", workers_ready=2)
    assert server.get().text == "ok"
    for worker in server.workers():
        assert "-m railcar.worker" in ps_args(worker["pid"])
    assert ps_args(server.proc.pid).startswith("railcar: master [start ")   # its venv has it
    server.stop()
    wait_for(lambda: server.proc.poll() is not None, 30, what="the master to exit")


def test_titles_name_role_app_and_release_directory():
    from railcar.proctitle import title

    assert title("master") == "railcar: master"
    assert title("master", args=["start", "/srv/shop/current", "--allow-root", "--env-file",
                                 "/srv/shop/shared/railcar.env"]) == \
        "railcar: master [start /srv/shop/current --allow-root --env-file " \
        "/srv/shop/shared/railcar.env]"
    assert title("master", args=["start", "/srv/my app"]) == \
        f"railcar: master [start {shlex.quote('/srv/my app')}]"
    assert title("worker", "shop", "/srv/shop/releases/20261129T101500Z-abc1234/") == \
        "railcar: worker shop 20261129T101500Z-abc1234"
    assert title("preloader", "blog", "/srv/blog") == "railcar: preloader blog blog"
