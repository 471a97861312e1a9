"""Privileges: env files (secrets), the admin group, accounts of a root master, runtime dirs.

Real masters and workers, real accounts (useradd; see accounts.py), facts read from /proc.
"""

from __future__ import annotations

import grp
import json
import os
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from accounts import (accounts, give, mode, needs_root, shared_dir,  # noqa: F401 (fixtures)
                      shared_venv)
from conftest import free_port, railcar_command, root_opt_in, wait_for, write_app
from railcar import config, envfile
from railcar.settings import SETTINGS, ConfigError

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
                                                 "--port", str(free_port()),
                                                 *root_opt_in(())],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{path}: {why}" in result.stderr
    assert "hunter2" not in result.stderr + result.stdout


def test_missing_env_file_is_refused_before_start(tmp_path):
    app = write_app(tmp_path / "app", ENV_APP)
    result = subprocess.run(railcar_command() + ["start", str(app), "--env-file",
                                                 str(tmp_path / "nope.env"), *root_opt_in(())],
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
    assert "FAILED" in result.stderr and "release None" not in result.stderr   # none booted
    assert token not in result.stderr + result.stdout
    assert server.get("/").text == f"{new_token} from-file two words"   # old workers serve

    assert token not in all_command_lines() and new_token not in all_command_lines()
    log = server.log()
    server.stop()
    assert token not in log and new_token not in log
    assert "may be read by other accounts" not in log


def test_an_env_file_others_may_read_is_warned_about(railcar, tmp_path):
    env_file = write_env_file(tmp_path / "app.env", "tok-" + secrets.token_hex(8))
    env_file.chmod(0o644)
    server = railcar().start(str(write_app(tmp_path / "app", ENV_APP)), "--workers", "1",
                             "--env-file", str(env_file))
    server.stop()
    assert f"env file {env_file} may be read by other accounts (mode 0644): make it 0600" \
        in server.log()


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
                                                 "--admin-group", "no-such-group-xyz",
                                                 *root_opt_in(())],
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
        "--admin-socket", str(directory / "admin.sock"), *root_opt_in(())],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{directory} {why}" in result.stderr
    assert not (directory / "admin.sock").exists()


# --- accounts of a root master -----------------------------------------------------------

def load(app_dir, **cli):
    return config.load({s.name: None for s in SETTINGS} | cli, str(app_dir))


@needs_root()
def test_a_root_owned_app_is_refused_without_an_account_or_allow_root(tmp_path):
    app = write_app(tmp_path / "app", WHOAMI_APP)
    with pytest.raises(ConfigError, match="owned by root, and an app never runs as root.*"
                                          "--allow-root"):
        load(app)
    with pytest.raises(ConfigError, match="user: workers never run as root \\('root' is root"):
        load(app, user="root")
    with pytest.raises(ConfigError, match="group: workers never run with the root group"):
        load(app, user="nobody", group="root")
    assert load(app, allow_root=True).apps[0].run_as is None     # the documented opt-in
    assert load(app, user="nobody").apps[0].run_as.user == "nobody"

    result = subprocess.run(railcar_command() + ["start", str(app), "--port", str(free_port())],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "is owned by root, and an app never runs as root" in result.stderr


@needs_root()
def test_the_app_root_owner_is_the_default_account(tmp_path, accounts):
    owner = accounts.user()
    app = write_app(tmp_path / "app", WHOAMI_APP)
    give(app, owner)
    [app_config] = load(app).apps
    assert (app_config.run_as.uid, app_config.run_as.gid) == (owner.pw_uid, owner.pw_gid)


@needs_root()
@pytest.mark.parametrize("table, key, value", [
    ("app", "user", '"root"'), ("app", "group", '"root"'), ("app", "python", '"/bin/sh"'),
    ("app", "allow_root", "true"), ("app", "env_file", '"/etc/shadow"'),
    ("server", "pid_file", '"/etc/passwd"'), ("server", "log_file", '"/etc/passwd"'),
    ("server", "admin_group", '"users"'),
])
def test_a_release_cannot_choose_account_interpreter_or_files_of_a_root_master(
        tmp_path, table, key, value):
    app = write_app(tmp_path / "app", WHOAMI_APP)
    (app / "railcar.toml").write_text(f"[{table}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as error:
        load(app, allow_root=True)
    assert f"{app / 'railcar.toml'} [{table}]: {key}: a release's railcar.toml cannot set this " \
           "for a master running as root" in str(error.value)
    # the same value from the command line is root's own choice
    flag = {"user": "nobody", "group": "nogroup", "python": "/bin/sh", "allow_root": True,
            "env_file": None, "pid_file": str(tmp_path / "pid"),
            "log_file": str(tmp_path / "log"), "admin_group": "users"}[key]
    (app / "railcar.toml").unlink()
    if flag is not None:
        load(app, **{"allow_root": True, key: flag})


WRAPPER = """#!/bin/sh
# the app's interpreter: note who runs it, then run the real one
echo "$(id -u) $1 ${{2%%[!a-z._]*}}" >> {log}
exec {python} "$@"
"""


def interpreter_runs(log: Path) -> list[tuple[int, str]]:
    runs = []
    for line in log.read_text().splitlines():
        uid, _, args = line.partition(" ")
        runs.append((int(uid), args))
    return runs


def assert_tree_runs_as(master_pid: int, account) -> list[psutil.Process]:
    """Every descendant of the master (preloader, workers), read from /proc, runs as
    `account`: real, effective and saved uid and gid, and no root group."""
    children = psutil.Process(master_pid).children(recursive=True)
    assert children
    for child in children:
        assert set(child.uids()) == {account.pw_uid}, (child.pid, child.cmdline())
        assert set(child.gids()) == {account.pw_gid}, (child.pid, child.cmdline())
        status = Path(f"/proc/{child.pid}/status").read_text()
        groups = next(line for line in status.splitlines() if line.startswith("Groups:"))
        assert "0" not in groups.split()[1:], groups
    return children


@needs_root()
@pytest.mark.parametrize("spawn_method", ["smart", "direct"])
@pytest.mark.parametrize("how", ["app_dir", "config"])
def test_nothing_of_the_app_runs_as_root(railcar, accounts, shared_dir, shared_venv, tmp_path,
                                         how, spawn_method):
    """`railcar start --config FILE` and `railcar start APP_DIR` as root: the interpreter
    (a wrapper noting its uid) never runs as root, at start, restart, a killed worker's
    respawn or a replacement; the master's children run as the app's account."""
    account = accounts.user()
    app = write_app(shared_dir / "app", WHOAMI_APP)
    runs = shared_dir / "python-runs.log"
    runs.touch()
    runs.chmod(0o666)
    server = railcar()
    if how == "app_dir":
        wrapper = app / ".venv" / "bin" / "python"       # found as the app's own venv
        wrapper.parent.mkdir(parents=True)
        give(app, account)                               # the owner is the default account
        server.root_opt_in = False
        args = [str(app), "--workers", "2", "--max-requests", "6",
                "--spawn-method", spawn_method]
    else:
        wrapper = shared_dir / "bin" / "python"
        wrapper.parent.mkdir()
        config_file = tmp_path / "railcar.toml"
        config_file.write_text(
            f'[[apps]]\nname = "who"\nroot = "{app}"\npython = "{wrapper}"\n'
            f'user = "{account.pw_name}"\nbind = "127.0.0.1:{server.port}"\nworkers = 2\n'
            f'max_requests = 6\nspawn_method = "{spawn_method}"\n')
        args = ["--config", str(config_file)]
    wrapper.write_text(WRAPPER.format(log=runs, python=shared_venv / "bin" / "python"))
    wrapper.chmod(0o755)

    server.start(*args, workers_ready=2)
    assert server.get("/").text.split()[0] == str(account.pw_uid)
    first = {p.pid for p in assert_tree_runs_as(server.proc.pid, account)}

    result = server.cli("restart")
    assert result.returncode == 0, result.stderr
    restarted = {p.pid for p in assert_tree_runs_as(server.proc.pid, account)}
    assert not first & restarted

    victim = server.workers()[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len([w for w in server.workers() if w["pid"] != victim]) == 2, 60,
             what="the killed worker's replacement")

    for _ in range(20):          # past max_requests: workers are replaced
        server.get("/")
    wait_for(lambda: sum(a["replacements"].get("max_requests", 0)
                         for a in server.status()["apps"]) >= 1, 60,
             what="a worker replaced after max_requests")
    wait_for(lambda: len(server.workers()) == 2, 60, what="two ready workers")
    assert_tree_runs_as(server.proc.pid, account)
    server.stop()

    seen = interpreter_runs(runs)
    assert [uid for uid, _ in seen if uid != account.pw_uid] == [], seen
    checks = [args for _, args in seen if args == "-c import"]
    starts = [args for _, args in seen if args in ("-m railcar.worker", "-m railcar.preloader")]
    # The interpreter check runs at start, as the account; a passed check is remembered
    # while the interpreter's files are unchanged (release.check_python), so the restart,
    # respawn and replacement need not run it again.
    assert len(checks) >= 1, seen
    assert len(starts) >= (2 if spawn_method == "smart" else 6), seen


# --- the default runtime dir of an account -----------------------------------------------

@needs_root()
def test_a_planted_tmp_railcar_dir_makes_start_refuse(accounts, shared_dir, shared_venv):
    owner = accounts.user()
    attacker = accounts.user()
    app = write_app(shared_dir / "app", WHOAMI_APP)
    give(app, owner)
    default = Path(f"/tmp/railcar-{owner.pw_uid}")
    railcar_bin = str(shared_venv / "bin" / "railcar")

    def start(*args: str) -> subprocess.CompletedProcess:
        return run_as(owner.pw_name, railcar_bin, "start", str(app), "--workers", "1",
                      "--port", str(free_port()), *args, timeout=60)

    shutil.rmtree(default, ignore_errors=True)   # left by an earlier account with this uid
    try:
        run_as(attacker.pw_name, "mkdir", "-m", "777", str(default))
        default.chmod(0o777)                     # whatever the attacker's umask
        result = start()
        assert result.returncode != 0
        assert f"{default} is owned by {attacker.pw_name} (uid {attacker.pw_uid}), not by " \
               f"{owner.pw_name}" in result.stderr
        assert sorted(os.listdir(default)) == []     # nothing created there
        result = run_as(owner.pw_name, railcar_bin, "status", timeout=30)
        assert result.returncode != 0       # a stranger's socket there could pose as a master
        assert f"not using the admin socket in {default}" in result.stderr

        os.chown(default, owner.pw_uid, owner.pw_gid)    # the owner's own, but open to all
        result = start()
        assert result.returncode != 0
        assert f"{default} is writable by group and others (mode 0777)" in result.stderr

        default.rmdir()
        default.symlink_to(shared_dir)
        result = start()
        assert result.returncode != 0
        assert f"{default} is a symlink" in result.stderr
        default.unlink()

        # Left to itself, railcar makes the directory, the account's alone.
        result = start("--daemon")
        assert result.returncode == 0, result.stdout + result.stderr
        assert os.lstat(default).st_uid == owner.pw_uid and mode(default) == 0o700
        assert mode(default / "admin.sock") == 0o600
        assert run_as(owner.pw_name, railcar_bin, "status", timeout=30).returncode == 0
    finally:
        run_as(owner.pw_name, railcar_bin, "stop", timeout=60)
        if default.is_symlink():
            default.unlink()
        shutil.rmtree(default, ignore_errors=True)


def test_log_file_symlink_is_not_followed(railcar, tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep\n")
    server = railcar()
    server.log_file.symlink_to(target)
    server.start(str(write_app(tmp_path / "app", WHOAMI_APP)), "--workers", "1", wait=False)
    assert server.proc.wait(timeout=60) != 0
    assert f"log file {server.log_file} is a symlink" in server.proc.stdout.read().decode()
    assert target.read_text() == "keep\n"


def test_rendering_a_config_runs_nothing_so_checks_no_account(tmp_path):
    """`railcar config` only renders: a root-owned app dir and an env file the renderer cannot
    read (the app account's, 0600) are no reason to refuse."""
    app = write_app(tmp_path / "app", WHOAMI_APP)
    result = subprocess.run(railcar_command() + [
        "config", "nginx", str(app), "--bind", f"unix:{tmp_path / 'app.sock'}",
        "--env-file", str(tmp_path / "not-readable-here.env")],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"unix:{tmp_path / 'app.sock'}" in result.stdout


def test_access_log_symlink_is_not_followed(railcar, tmp_path):
    target = tmp_path / "precious"
    target.write_text("keep\n")
    access = tmp_path / "access.log"
    access.symlink_to(target)
    server = railcar().start(str(write_app(tmp_path / "app", WHOAMI_APP)), "--workers", "1",
                             "--access-log", str(access), wait=False)
    error = wait_for(lambda: os.path.exists(server.admin_socket)
                     and server.status()["apps"][0]["error"], 60, what="the boot error")
    assert "Too many levels of symbolic links" in error and str(access) in error
    assert target.read_text() == "keep\n"
    server.stop()


def test_default_runtime_dir_is_run_railcar_for_root_else_tmp(monkeypatch):
    monkeypatch.delenv("RAILCAR_ADMIN_SOCKET", raising=False)
    from railcar.settings import default_admin_socket, default_run_dir

    expected = "/run/railcar" if os.getuid() == 0 else f"/tmp/railcar-{os.getuid()}"
    assert default_run_dir() == expected
    assert default_admin_socket() == f"{expected}/admin.sock"


def test_an_unsafe_run_dir_is_refused_before_any_socket(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_dir.chmod(0o777)
    app = write_app(tmp_path / "app", WHOAMI_APP)
    config_file = tmp_path / "railcar.toml"
    config_file.write_text(f'[server]\nrun_dir = "{run_dir}"\nadmin_socket = '
                           f'"{tmp_path / "admin" / "admin.sock"}"\n'
                           f'[[apps]]\nname = "who"\nroot = "{app}"\nallow_root = true\n')
    result = subprocess.run(railcar_command() + ["start", "--config", str(config_file)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"{run_dir} is writable by group and others (mode 0777)" in result.stderr
    assert os.listdir(run_dir) == []


@needs_root()
def test_an_admin_socket_the_account_cannot_create_is_named(accounts, shared_dir, shared_venv):
    owner = accounts.user()
    app = write_app(shared_dir / "app", WHOAMI_APP)
    give(app, owner)
    result = run_as(owner.pw_name, str(shared_venv / "bin" / "railcar"), "start", str(app),
                    "--workers", "1", "--port", str(free_port()),
                    "--admin-socket", str(shared_dir / "admin.sock"), timeout=60)
    assert result.returncode != 0
    assert f"cannot create the admin socket {shared_dir / 'admin.sock'}: Permission denied" \
        in result.stderr
    assert "Traceback" not in result.stderr
