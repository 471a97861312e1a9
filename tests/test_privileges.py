"""Privileges: env files (secrets), the admin group, accounts of a root master, runtime dirs.

Real masters and workers, real accounts (useradd; see accounts.py), facts read from /proc.
"""

from __future__ import annotations

import grp
import json
import os
import secrets
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from accounts import (accounts, give, mode, needs_root, shared_dir,  # noqa: F401 (fixtures)
                      shared_venv)
from conftest import free_port, railcar_command, wait_for, write_app
from railcar import envfile

ENV_APP = '''
import os
def application(environ, start_response):
    body = " ".join(os.environ.get(k, "-") for k in ("API_TOKEN", "PLAIN", "QUOTED")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

WHOAMI_APP = '''
import os
def application(environ, start_response):
    body = f"{os.getuid()} {os.getgid()} {os.getpid()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def all_command_lines() -> str:
    """Every process's argv on the host, as /proc shows it to anyone."""
    lines = []
    for proc in psutil.process_iter():
        try:
            lines.append("\0".join(proc.cmdline()))
        except psutil.Error:
            pass
    return "\n".join(lines)


def write_env_file(path: Path, token: str, plain: str = "from-file") -> Path:
    path.write_text(f"# the app's secrets\n\nAPI_TOKEN=\"{token}\"\nexport PLAIN={plain}\n"
                    "QUOTED='two words'\n")
    os.chmod(path, 0o600)
    return path


# --- env_file ----------------------------------------------------------------------------

def test_env_file_parses_like_systemd():
    text = ("# comment\n; also a comment\n\nA=1\n  B = two words \nexport C='it''s'\n"
            "D=\"say \\\"hi\\\" \\\\o/\"\nE=\nF='#not a comment'\nG=a=b\n")
    assert envfile.parse(text, "x.env") == {
        "A": "1", "B": "two words", "C": "it''s", "D": 'say "hi" \\o/', "E": "",
        "F": "#not a comment", "G": "a=b"}


@pytest.mark.parametrize("line, why", [
    ("TOKEN hunter2-value", "line 2: expected KEY=VALUE"),
    ("2TOKEN=hunter2-value", "line 2: the name before '=' is not a valid variable name"),
    ("TOKEN=\"hunter2-value", "line 2: the value's opening quote is not closed"),
])
def test_env_file_errors_name_the_line_never_the_value(tmp_path, line, why):
    path = tmp_path / "bad.env"
    path.write_text(f"OK=1\n{line}\n")
    app = write_app(tmp_path / "app", ENV_APP)
    result = subprocess.run(railcar_command() + ["start", str(app), "--env-file", str(path),
                                                 "--port", str(free_port())],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{path}: {why}" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_missing_env_file_is_refused_before_start(tmp_path):
    app = write_app(tmp_path / "app", ENV_APP)
    result = subprocess.run(railcar_command() + ["start", str(app), "--env-file",
                                                 str(tmp_path / "nope.env")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{tmp_path / 'nope.env'}: cannot read the env file" in result.stderr


def test_env_file_values_reach_the_app_and_nowhere_else(railcar, tmp_path):
    token = "tok-" + secrets.token_hex(12)
    env_file = write_env_file(tmp_path / "app.env", token)
    app = write_app(tmp_path / "app", ENV_APP)
    server = railcar().start(str(app), "--env-file", str(env_file), "--env", "PLAIN=from-env",
                             "--workers", "2", workers_ready=2)
    # the file comes after --env: its PLAIN wins
    assert server.get("/").text == f"{token} from-file two words"
    assert token not in all_command_lines()
    for command in (["status", "--json"], ["status"], ["status", "--requests", "--json"],
                    ["backtraces"]):
        result = server.cli(*command)
        assert result.returncode == 0, result.stderr
        assert token not in result.stdout + result.stderr, command

    # A restart reads the file again; a file gone bad fails the restart, naming the file only.
    new_token = "tok-" + secrets.token_hex(12)
    write_env_file(env_file, new_token)
    result = server.cli("restart")
    assert result.returncode == 0, result.stderr
    assert server.get("/").text == f"{new_token} from-file two words"
    env_file.write_text(f"API_TOKEN {token}\n")
    result = server.cli("restart")
    assert result.returncode != 0
    assert f"{env_file}: line 1: expected KEY=VALUE" in result.stderr
    assert token not in result.stderr + result.stdout
    assert server.get("/").text == f"{new_token} from-file two words"   # old workers serve

    assert token not in all_command_lines() and new_token not in all_command_lines()
    log = server.log()
    server.stop()
    assert token not in log and new_token not in log


# --- admin_group -------------------------------------------------------------------------

class AccountMaster:
    """`railcar start` run as `user` through runuser (the master is not root)."""

    def __init__(self, user: str, run_dir: Path, venv: Path):
        self.user = user
        self.railcar = str(venv / "bin" / "railcar")
        self.admin_socket = str(run_dir / "admin.sock")
        self.log_file = run_dir / "railcar.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, *args: str) -> "AccountMaster":
        self.proc = subprocess.Popen(
            ["runuser", "-u", self.user, "--", self.railcar, "start", *args,
             "--port", str(self.port), "--admin-socket", self.admin_socket,
             "--log-file", str(self.log_file)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        wait_for(lambda: self.ready(), 60, what="the master to serve")
        return self

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"railcar exited: {self.proc.stdout.read().decode()}"
                                 f"{self.log_file.read_text() if self.log_file.exists() else ''}")
        result = run_as("root", self.railcar, "status", "--json", "--admin-socket",
                        self.admin_socket)
        if result.returncode != 0:
            return False
        return any(w["state"] == "ready" for a in json.loads(result.stdout)["apps"]
                   for w in a["workers"])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                child.send_signal(signal.SIGTERM)
            except psutil.Error:
                pass
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(self.proc.pid).children(recursive=True):
                child.kill()
            self.proc.kill()
            self.proc.wait()


def run_as(user: str, *command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    prefix = [] if user == "root" else ["runuser", "-u", user, "--"]
    return subprocess.run(prefix + list(command), capture_output=True, text=True,
                          timeout=timeout)


@needs_root()
def test_admin_group_lets_a_deploy_account_drive_a_master_of_another_account(
        accounts, shared_dir, shared_venv):
    group = accounts.group()
    app_user = accounts.user(groups=(group,))
    deploy = accounts.user(groups=(group,))
    outsider = accounts.user()
    app = write_app(shared_dir / "app", WHOAMI_APP)
    run_dir = shared_dir / "run"
    run_dir.mkdir(mode=0o700)
    give(shared_dir, app_user)
    master = AccountMaster(app_user.pw_name, run_dir, shared_venv)
    rc = master.railcar
    try:
        master.start(str(app), "--workers", "1", "--admin-group", group)
        gid = grp.getgrnam(group).gr_gid
        assert mode(master.admin_socket) == 0o660
        assert os.stat(master.admin_socket).st_gid == gid
        assert os.stat(run_dir).st_gid == gid and mode(run_dir) == 0o750

        result = run_as(deploy.pw_name, rc, "status", "--json", "--admin-socket",
                        master.admin_socket)
        assert result.returncode == 0, result.stderr
        [before] = json.loads(result.stdout)["apps"][0]["workers"]
        assert psutil.Process(before["pid"]).uids().real == app_user.pw_uid

        result = run_as(deploy.pw_name, rc, "restart", "--admin-socket", master.admin_socket)
        assert result.returncode == 0, result.stderr
        result = run_as(deploy.pw_name, rc, "status", "--json", "--admin-socket",
                        master.admin_socket)
        [after] = json.loads(result.stdout)["apps"][0]["workers"]
        assert after["pid"] != before["pid"]

        result = run_as(outsider.pw_name, rc, "status", "--admin-socket", master.admin_socket)
        assert result.returncode != 0
        assert "ermission denied" in result.stderr
    finally:
        master.stop()


def test_without_admin_group_the_socket_is_the_masters_alone(railcar, tmp_path):
    server = railcar().start(str(write_app(tmp_path / "app", WHOAMI_APP)), "--workers", "1")
    assert mode(server.admin_socket) == 0o600
    server.stop()


def test_unknown_admin_group_is_refused(tmp_path):
    result = subprocess.run(railcar_command() + ["start", str(write_app(tmp_path / "app",
                                                                         WHOAMI_APP)),
                                                 "--admin-group", "no-such-group-xyz"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "admin_group: no such group 'no-such-group-xyz'" in result.stderr


# --- runtime directories -----------------------------------------------------------------

@pytest.mark.parametrize("setup, why", [
    (lambda d: (d.mkdir(), d.chmod(0o777)), "is writable by group and others (mode 0777)"),
    (lambda d: (d.mkdir(), d.chmod(0o770)), "is writable by its group (mode 0770)"),
    (lambda d: (d.parent.joinpath("elsewhere").mkdir(), d.symlink_to("elsewhere")),
     "is a symlink"),
])
def test_an_unsafe_admin_socket_directory_is_refused(tmp_path, setup, why):
    directory = tmp_path / "run"
    setup(directory)
    app = write_app(tmp_path / "app", WHOAMI_APP)
    result = subprocess.run(railcar_command() + [
        "start", str(app), "--port", str(free_port()), "--workers", "1",
        "--admin-socket", str(directory / "admin.sock")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{directory} {why}" in result.stderr
    assert not (directory / "admin.sock").exists()
