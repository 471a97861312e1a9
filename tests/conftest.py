"""Fixtures for tests that run real railcar masters, workers and virtualenvs on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def railcar_command() -> list[str]:
    script = BIN / "railcar"
    return [str(script)] if script.exists() else [sys.executable, "-m", "railcar.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gone(pid: int) -> bool:
    """The process has exited (a zombie not yet reaped by its parent counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def root_opt_in(args) -> list[str]:
    """Tests run as root serve apps in root's own temporary dirs: a root master refuses to run
    an app as root without --allow-root, so it is given unless the test chose an account."""
    if os.getuid() != 0 or any(a in ("--user", "--config", "--allow-root") for a in args):
        return []
    return ["--allow-root"]


class RailcarServer:
    """A `railcar start` in the foreground, with its own admin socket, log and port."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.admin_socket = str(workdir / "admin.sock")
        self.log_file = workdir / "railcar.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.pids_seen: set[int] = set()
        self.root_opt_in = True     # as root, add --allow-root (see root_opt_in)
        self.prefix: list[str] = []     # a wrapper the master runs under (e.g. a seccomp filter)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str, wait: bool = True, workers_ready: int | None = None):
        opt_in = root_opt_in(args) if self.root_opt_in else []
        cmd = self.prefix + railcar_command() + [
            "start", *args, *opt_in, "--port", str(self.port),
            "--admin-socket", self.admin_socket, "--log-file", str(self.log_file)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if wait:
            wait_for(lambda: self.ready_workers() >= (workers_ready or 1), 60,
                     what=f"railcar to serve (log: {self.log()})")
        return self

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(railcar_command() + [*args, "--admin-socket", self.admin_socket],
                              capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict:
        result = self.cli("status", "--json", timeout=30)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        for app in data["apps"]:
            self.pids_seen.update(w["pid"] for w in app["workers"] if w["pid"])
        return data

    def workers(self, state: str | None = "ready") -> list[dict]:
        try:
            data = self.status()
        except AssertionError:
            return []
        return [w for app in data["apps"] for w in app["workers"]
                if state is None or w["state"] == state]

    def only_worker_pid(self) -> int:
        """The pid of the one ready worker (asserts there is exactly one)."""
        [worker] = self.workers()
        return worker["pid"]

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A plain TCP connection to the server's port."""
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def ready_workers(self) -> int:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"railcar exited: {self.proc.returncode}\n{self.log()}")
        if not os.path.exists(self.admin_socket):
            return 0
        return len(self.workers())

    def get(self, path: str = "/", **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kwargs)

    def log(self) -> str:
        try:
            return self.log_file.read_text()
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.cli("stop", timeout=60)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill_everything(self) -> None:
        """Teardown: end the master and any worker it started that is still alive."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids_seen:
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass


@pytest.fixture
def railcar(tmp_path):
    """Factory of RailcarServer objects; every one is stopped at the end of the test."""
    servers: list[RailcarServer] = []

    def make() -> RailcarServer:
        workdir = tmp_path / f"server{len(servers)}"
        workdir.mkdir()
        server = RailcarServer(workdir)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.kill_everything()


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory) -> Path:
    """railcar's wheel and its dependencies, with those of its server extra, so test
    virtualenvs install without a registry: `railcar` for an app's, `railcar[server]` for a
    master's."""
    house = tmp_path_factory.mktemp("wheelhouse")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(house),
                    f"{REPO}[server]"], check=True, timeout=600)
    return house


@pytest.fixture(scope="session")
def make_venv(wheelhouse):
    """Create a real virtualenv (with railcar installed from the wheelhouse) at a path."""

    def make(path: Path, with_railcar: bool = True) -> Path:
        subprocess.run([sys.executable, "-m", "virtualenv", "-q", "--no-download", str(path)],
                       check=True, timeout=300)
        python = path / "bin" / "python"
        if with_railcar:
            subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index",
                            "--find-links", str(wheelhouse), "railcar"], check=True, timeout=600)
        return python

    return make


@pytest.fixture(autouse=True)
def _no_stray_children():
    """Every test must leave no child process of its own behind."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = [p for p in psutil.Process().children(recursive=True)
                if p.pid not in before and p.status() != psutil.STATUS_ZOMBIE]
        if not left:
            return
        time.sleep(0.2)
    for proc in left:
        proc.kill()
    raise AssertionError(f"processes left behind: {[p.cmdline() for p in left]}")


def write_app(directory: Path, source: str) -> Path:
    """A one-file app: `directory/wsgi.py` holding `source` (parents made as needed)."""
    directory.mkdir(parents=True)
    (directory / "wsgi.py").write_text(source)
    return directory


def swap_current(root: Path, release: Path) -> None:
    """Atomic publish, as a deploy does it: a symlink under a temporary name, renamed over
    `root/current`."""
    tmp = root / "current.tmp"
    os.symlink(release, tmp)
    os.replace(tmp, root / "current")


def copy_example(name: str, dest: Path) -> Path:
    shutil.copytree(REPO / "examples" / name, dest)
    return dest
