"""Real system accounts for tests of privileges: created with useradd, removed afterwards.

Names are unique per test run (`rc` + random suffix), so parallel runs never collide. Needs
root; tests using it are skipped otherwise.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

IS_ROOT = os.getuid() == 0


def needs_root():
    return pytest.mark.skipif(not IS_ROOT or not shutil.which("useradd"),
                              reason="creates system accounts (useradd) and runs as root")


def exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def kill_processes_of(uid: int) -> None:
    """End (by pid) the processes left running as a test account, e.g. a server it ran."""
    for proc in psutil.process_iter(["uids"]):
        try:
            if proc.info["uids"] and proc.info["uids"].real == uid:
                proc.kill()
        except psutil.Error:
            pass


class Accounts:
    """Creates users and groups; `remove_all` deletes every one it made, or expected the code
    under test to make (`expect`), with their processes, homes, groups and sudo rules."""

    def __init__(self):
        self.users: list[str] = []
        self.groups: list[str] = []
        self.expected: list[str] = []
        self.sudo_rules: list[Path] = []

    def expect(self, prefix: str = "rc") -> str:
        """A unique name the code under test will create as a user and group; removed at the
        end all the same."""
        name = prefix + secrets.token_hex(3)
        self.expected.append(name)
        return name

    def login(self, prefix: str = "rc", sudo: bool = False,
              sudo_password: str | None = None) -> str:
        """A login account (home, /bin/sh) for SSH; `sudo`: its only power, a NOPASSWD rule
        in /etc/sudoers.d (removed at the end); `sudo_password`: a rule asking for that
        password (the account's)."""
        name = self.expect(prefix)
        # password "*": none, but not locked ("!"), which sshd without PAM would refuse
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", "--password", "*",
                        name], check=True, timeout=30)
        if sudo_password:
            subprocess.run(["chpasswd"], input=f"{name}:{sudo_password}\n", text=True,
                           check=True, timeout=30)
        if sudo or sudo_password:
            rule = Path("/etc/sudoers.d") / name
            tag = "" if sudo_password else "NOPASSWD: "
            rule.write_text(f"{name} ALL=(ALL:ALL) {tag}ALL\n")
            rule.chmod(0o440)
            self.sudo_rules.append(rule)
        return name

    def group(self) -> str:
        name = "rcg" + secrets.token_hex(3)
        subprocess.run(["groupadd", name], check=True, timeout=30)
        self.groups.append(name)
        return name

    def user(self, groups: tuple[str, ...] = ()) -> pwd.struct_passwd:
        name = "rc" + secrets.token_hex(3)
        cmd = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", "--user-group"]
        if groups:
            cmd += ["--groups", ",".join(groups)]
        subprocess.run(cmd + [name], check=True, timeout=30)
        self.users.append(name)
        return pwd.getpwnam(name)

    def remove_all(self) -> None:
        for rule in self.sudo_rules:
            rule.unlink(missing_ok=True)
        for name in self.expected:
            if exists(name):
                kill_processes_of(pwd.getpwnam(name).pw_uid)
                subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=30)
            try:
                grp.getgrnam(name)
                subprocess.run(["groupdel", name], capture_output=True, timeout=30)
            except KeyError:
                pass
        for name in self.users:
            subprocess.run(["userdel", name], timeout=30)
        for name in self.groups:
            try:
                grp.getgrnam(name)
            except KeyError:
                continue
            subprocess.run(["groupdel", name], timeout=30)


@pytest.fixture
def accounts():
    made = Accounts()
    yield made
    made.remove_all()


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(scope="session")
def shared_venv(wheelhouse):
    """A virtualenv with railcar[server] (a master's) that every account can run: built from
    the system's python3 (this run's own interpreter may live under /root), in a directory all
    can reach."""
    base = Path(tempfile.mkdtemp(prefix="railcar-venv-"))
    os.chmod(base, 0o755)
    python = SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else sys.executable
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "virtualenv", "-q", "--no-download", "-p", python,
                    str(venv)], check=True, timeout=300)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-index",
                    "--find-links", str(wheelhouse), "railcar[server]"], check=True, timeout=600)
    yield venv
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def shared_dir():
    """A directory other accounts can reach (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="railcar-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def give(path: Path, account: pwd.struct_passwd) -> None:
    """Make `path` (recursively) belong to `account`."""
    for root, dirs, files in os.walk(path):
        for name in [root] + [os.path.join(root, n) for n in dirs + files]:
            os.lchown(name, account.pw_uid, account.pw_gid)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)
