"""`fab setup / deploy / rollback / releases` over real OpenSSH to loopback test hosts.

The tests run in order on shared hosts (each deploy builds on the last), the way a site
lives: first deploy, a changed release under load, a broken one, a failing hook, a locked and
a killed deploy, two hosts, cleanup. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from accounts import Accounts
from conftest import free_port
from loadgen import Load
from loopback import SshHosts

FAB = str(Path(sys.executable).parent / "fab")
# The hosts' interpreter for the virtualenvs: one every account may run (this run's own
# may live under /root, which the app account cannot reach).
HOST_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"
APP = '''
import os
{extra}
def application(environ, start_response):
    body = b"version {version}"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''
TIMINGS: dict[str, float] = {}
CALLS: dict[str, int] = {}
WAITS = ("restart", "health")     # stages that wait for the app's workers


def stage_seconds(output: str, stage: str) -> float:
    line = next(line for line in output.splitlines() if f"] {stage:<8} ok " in line)
    return float(line.split(" ok ")[1].split("s")[0])


def stages_seconds(output: str, skip: tuple[str, ...] = ()) -> float:
    """The sum of the reported stage timings, without the stages in `skip`."""
    found = re.findall(r"\] (\w+) +ok ([0-9.]+)s", output)
    return sum(float(seconds) for stage, seconds in found if stage not in skip)


def remote_calls(output: str, host: str = "host1") -> list[str]:
    """The remote calls a traced run made (RAILCAR_DEPLOY_TRACE=1): `run ...` / `put ...`."""
    return [line.split("s ", 1)[1] for line in output.splitlines()
            if re.match(rf"\[{host}\] +[0-9.]+s (run|put) ", line)]


class Site:
    """The loopback hosts, the app's git repo and the project dir holding fabfile.py."""

    def __init__(self, workdir: Path, wheelhouse: Path):
        self.workdir = workdir
        self.ssh = SshHosts(workdir / "ssh")
        self.hosts = {}
        self.ports = {}
        self.app = workdir / "app"
        self.project = workdir / "project"
        self.wheelhouse = wheelhouse
        self.accounts = Accounts()
        self.user = self.accounts.expect()     # the app account, created by `fab setup`
        self.extra = ""                         # more `railcar:` settings (indented lines)
        self.health_path = "/"

    def create(self, requirements: str) -> None:
        """An empty git repo for the app (with its requirements) and the project's fabfile."""
        self.app.mkdir()
        self.project.mkdir()
        subprocess.run(["git", "init", "-q", str(self.app)], check=True)
        (self.app / "requirements.txt").write_text(requirements)
        (self.project / "fabfile.py").write_text("from railcar.deploy import ns\n")

    def add_host(self, name: str):
        self.hosts[name] = self.ssh.start(name)
        self.ports[name] = free_port()
        self.write_config()

    def write_config(self) -> None:
        per_host = "".join(
            f"    {name}: {{deploy_to: {host.deploy_to}, bind: ['127.0.0.1:{self.ports[name]}']}}\n"
            for name, host in self.hosts.items())
        (self.project / "fabric.yaml").write_text(f"""\
ssh_config_path: {self.ssh.ssh_config}
railcar:
  app: site
  user: {self.user}
  python: {HOST_PYTHON}
  source: {self.app}
  wheelhouse: {self.wheelhouse}
  pip_args: [--no-index]
  keep_releases: 3
  shared_dirs: [log]
  health_path: {self.health_path}
  health_timeout: 15
{self.extra}  per_host:
{per_host}""")

    def commit(self, version: str, extra: str = "") -> str:
        (self.app / "wsgi.py").write_text(APP.format(version=version, extra=extra))
        git = ["git", "-C", str(self.app), "-c", "user.email=t@example.com", "-c", "user.name=t"]
        subprocess.run(git + ["add", "wsgi.py", "requirements.txt"], check=True)
        subprocess.run(git + ["commit", "-q", "-m", version], check=True)
        return subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()

    def fab(self, *args: str, ok: bool = True, timeout: float = 240, trace: bool = False,
            env: dict[str, str] | None = None) -> str:
        env = {**os.environ, **(env or {}), **({"RAILCAR_DEPLOY_TRACE": "1"} if trace else {})}
        result = subprocess.run([FAB, *args], cwd=self.project, capture_output=True, text=True,
                                timeout=timeout, env=env)
        output = result.stdout + result.stderr
        print(output)
        assert (result.returncode == 0) == ok, output
        return output

    def popen_fab(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([FAB, *args], cwd=self.project, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    def root(self, name: str = "host1") -> Path:
        return self.hosts[name].deploy_to

    def current(self, name: str = "host1") -> str:
        return os.path.basename(os.readlink(self.root(name) / "current"))

    def get(self, name: str = "host1") -> str:
        import requests

        return requests.get(f"http://127.0.0.1:{self.ports[name]}/", timeout=10).text

    def states(self, name: str = "host1") -> dict[str, str]:
        out = {}
        for release in sorted((self.root(name) / "releases").iterdir()):
            state = release / ".railcar-state"
            out[release.name] = state.read_text().strip() if state.exists() else "incomplete"
        return out

    def close(self) -> None:
        """Stop the servers and sshds, remove the accounts and the temp dirs."""
        try:
            self.stop_servers()
            self.ssh.stop_all()
        finally:
            self.accounts.remove_all()
            shutil.rmtree(self.workdir, ignore_errors=True)

    def stop_servers(self) -> None:
        for name in self.hosts:
            admin = self.root(name) / "run" / "admin.sock"
            railcar = self.root(name) / "railcar" / "bin" / "railcar"
            if admin.exists() and railcar.exists():
                subprocess.run([str(railcar), "stop", "--admin-socket", str(admin)],
                               capture_output=True, timeout=90)
            pid_file = self.root(name) / "run" / "railcar.pid"
            if pid_file.exists():
                try:
                    os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
                except (ValueError, ProcessLookupError):
                    pass


@pytest.fixture(scope="module")
def deploy_wheelhouse(wheelhouse, tmp_path_factory) -> Path:
    """The session wheelhouse plus virtualenv, which the hosts' server venvs install."""
    house = tmp_path_factory.mktemp("deploy-wheels")
    for wheel in wheelhouse.glob("*.whl"):
        shutil.copy(wheel, house)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(house),
                    "virtualenv"], check=True, timeout=600)
    return house


@pytest.fixture(scope="module")
def site(tmp_path_factory, deploy_wheelhouse):
    site = Site(tmp_path_factory.mktemp("deploy"), deploy_wheelhouse)
    site.create("click\n")
    (site.app / "uncommitted.txt").write_text("never shipped\n")
    subprocess.run(["git", "-C", str(site.app), "add", "requirements.txt"], check=True)
    try:
        site.add_host("host1")
        site.add_host("host2")
        yield site
    finally:
        site.close()


def deploy_under_load(site: Site, *args: str, ok: bool = True, trace: bool = False,
                      host: str = "host1", env: dict[str, str] | None = None) \
        -> tuple[str, Load, float]:
    load = Load("127.0.0.1", site.ports["host1"], clients=4, max_seconds=120).start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        output = site.fab("-H", host, "deploy", *args, ok=ok, trace=trace, env=env)
        took = time.monotonic() - started
        time.sleep(0.5)
    finally:
        load.stop()
    return output, load, took


def test_setup_is_idempotent(site):
    first = site.fab("-H", "host1", "setup")
    assert "installed railcar-" in first
    second = site.fab("-H", "host1", "setup")
    for stage in ("layout", "wheels", "server"):
        assert f"{stage:<8} ok" in second and "unchanged" in second
    assert "installed" not in second and "created" not in second


def test_first_deploy_serves(site):
    sha = site.commit("1")
    started = time.monotonic()
    output = site.fab("-H", "host1", "deploy", trace=True)
    TIMINGS["first deploy"] = time.monotonic() - started
    TIMINGS["first venv stage"] = stage_seconds(output, "venv")
    TIMINGS["first deploy stages but restart/health"] = stages_seconds(output, WAITS)
    CALLS["first deploy"] = len(remote_calls(output))
    assert "built venvs/" in output
    for stage in ("lock", "check", "upload", "unpack", "link", "venv", "hooks", "swap",
                  "restart", "health", "mark", "cleanup", "unlock"):
        assert f"{stage:<8} ok" in output, stage
    assert site.get() == "version 1"
    current = site.root() / "current"
    assert (current / "REVISION").read_text().strip() == sha
    assert not (current / "uncommitted.txt").exists()
    assert (current / "log").resolve() == site.root() / "shared" / "log"
    assert site.current().endswith("-" + sha[:7])
    # the app's venv got plain railcar (what workers import), the server's railcar[server]
    libraries = "import importlib.util as u; print(*[u.find_spec(m) is not None for m in " \
                "('railcar', 'gevent', 'psutil', 'jinja2', 'prometheus_client')])"
    for venv, expected in ((current / ".venv", "True True False False False"),
                           (site.root() / "railcar", "True True True True True")):
        found = subprocess.run([str(venv / "bin" / "python"), "-c", libraries],
                               capture_output=True, text=True, timeout=60, check=True)
        assert found.stdout.split() == expected.split(), venv


def test_second_deploy_under_load_reuses_the_venv(site):
    sha = site.commit("2")
    output, load, took = deploy_under_load(site, trace=True)
    calls = remote_calls(output)
    TIMINGS["second deploy"] = took
    TIMINGS["second venv stage"] = stage_seconds(output, "venv")
    TIMINGS["second deploy stages but restart/health"] = stages_seconds(output, WAITS)
    CALLS["second deploy"] = len(calls)
    print("\n" + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in TIMINGS.items())
          + "; remote calls: " + ", ".join(f"{name} {n}" for name, n in CALLS.items()))
    assert "reused venvs/" in output and "built venvs/" not in output
    assert not [call for call in calls if "pip" in call or "build-venv" in call], calls
    assert load.failures() == [], load.failures()[:3]
    assert len(load.outcomes) > 50
    assert site.get() == "version 2"
    # Every stage is one round trip (the upload one put): 13 calls, whatever the load.
    assert len(calls) <= 14, calls
    # Reuse is one round trip against virtualenv + pip, and the deploy is faster than the
    # first, though it runs under load and the first did not. Restart and health are left
    # out: they wait for the app's workers, and under load for the requests in flight.
    assert TIMINGS["second venv stage"] * 3 < TIMINGS["first venv stage"], TIMINGS
    assert (TIMINGS["second deploy stages but restart/health"]
            < TIMINGS["first deploy stages but restart/health"]), TIMINGS
    log = (site.root() / "revisions.log").read_text().splitlines()
    assert len(log) == 2 and log[-1].split()[1:3] == ["deployed", site.current()]
    assert sha in log[-1]


def test_status_is_one_round_trip(site):
    """`fab status`: where current points and its state, then `railcar status`, in one
    remote call (`--json`: railcar status --json alone, one call too)."""
    output = site.fab("-H", "host1", "status", trace=True)
    assert len(remote_calls(output)) == 1, remote_calls(output)
    lines = output[output.index("[host1]\n"):].splitlines()
    assert lines[1] == f"current -> releases/{site.current()} (good)", output
    assert lines[2].startswith("railcar ") and "master pid" in lines[2], output
    assert "\nsite  [serving]" in output and "railcar-status" not in output, output
    output = site.fab("-H", "host1", "status", "--json", trace=True)
    assert len(remote_calls(output)) == 1, remote_calls(output)
    status = json.loads(output[output.index("[host1]\n") + 8:].split("\n[host1]")[0])
    assert [app["name"] for app in status["apps"]] == ["site"]


def test_broken_release_is_refused_and_skipped_by_rollback(site):
    good = site.current()
    site.commit("3", extra='raise RuntimeError("release 3 cannot import")')
    output, load, _ = deploy_under_load(site, ok=False)
    assert "RuntimeError: release 3 cannot import" in output
    assert load.failures() == [], load.failures()[:3]
    assert site.current() == good and site.get() == "version 2"
    failed = [name for name, state in site.states().items() if state == "failed"]
    assert len(failed) == 1 and failed[0] > good
    listing = site.fab("-H", "host1", "releases")
    assert "failed" in listing and "* " + good in listing
    # rollback skips the failed release and goes back to the previous good one: version 1
    site.fab("-H", "host1", "rollback")
    assert site.get() == "version 1"
    assert "rolled back" in (site.root() / "revisions.log").read_text()
    site.fab("-H", "host1", "rollback", "--release", good)
    assert site.get() == "version 2"


def test_failing_hook_stops_before_the_swap(site):
    before = site.current()
    site.commit("4")
    hooks = site.project / "hooks.yaml"
    hooks.write_text("railcar:\n  hooks: ['echo migrating; exit 3']\n")
    output = site.fab("-f", str(hooks), "-H", "host1", "deploy", ok=False)
    assert "migrating" in output and "hooks    FAILED" in output
    assert "swap" not in output.split("hooks    FAILED")[1].split("marked")[0]
    assert site.current() == before and site.get() == "version 2"
    assert sorted(site.states().items())[-1][1] == "failed"


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 120) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and marker not in seen:
        ready, _, _ = select.select([proc.stdout], [], [], 1)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
    assert marker in seen, seen
    return seen


def test_concurrent_deploy_fails_fast_on_the_lock(site):
    # a hook keeps the first deploy under its lock while the second starts: a repeat deploy
    # can take less time than starting `fab`
    slow = site.project / "slow-hook.yaml"
    slow.write_text("railcar:\n  hooks: ['sleep 8']\n")
    first = site.popen_fab("-f", str(slow), "-H", "host1", "deploy")
    try:
        read_until(first, "lock     ok")
        started = time.monotonic()
        output = site.fab("-H", "host1", "deploy", ok=False)
        assert time.monotonic() - started < 20
        assert "deploy locked by" in output and f"pid {first.pid} " in output
    finally:
        rest = first.communicate(timeout=240)[0]
    assert first.returncode == 0, rest
    assert site.get() == "version 4"


def test_killed_deploy_then_next_deploy_succeeds(site):
    site.commit("5")
    proc = site.popen_fab("-H", "host1", "deploy")
    try:
        read_until(proc, "upload   upload")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert (site.root() / "deploy.lock").exists()
    output = site.fab("-H", "host1", "deploy")
    assert "stale lock" in output and f"process {proc.pid} on this machine is gone" in output
    assert site.get() == "version 5"
    assert "incomplete" not in site.states().values()
    assert list((site.root() / "tmp").iterdir()) == []


def test_cleanup_keeps_n_good_releases(site):
    states = site.states()
    good = [name for name, state in states.items() if state == "good"]
    assert len(good) == 3 and "failed" not in states.values()
    assert site.current() == good[-1]
    used = {os.path.basename(os.readlink(site.root() / "releases" / r / ".venv")) for r in good}
    assert {p.name for p in (site.root() / "venvs").iterdir()} == used


def test_two_hosts_prepare_all_before_any_swap(site):
    site.fab("-H", "host2", "setup")
    site.commit("6")
    output = site.fab("-H", "host1,host2", "deploy")
    lines = output.splitlines()
    first_swap = min(i for i, line in enumerate(lines) if "swap     point" in line)
    last_hook = max(i for i, line in enumerate(lines) if "hooks    ok" in line)
    assert last_hook < first_swap
    assert site.get("host1") == site.get("host2") == "version 6"

    # a failure on host2 before the swap leaves both hosts on version 6
    before = {name: site.current(name) for name in ("host1", "host2")}
    site.commit("7")
    hooks = site.project / "hooks2.yaml"
    hooks.write_text("railcar:\n  per_host:\n    host2: {hooks: ['exit 4']}\n")
    site.write_config()
    config = (site.project / "fabric.yaml").read_text()
    (site.project / "fabric.yaml").write_text(
        config.replace("    host2: {", "    host2: {hooks: ['exit 4'], "))
    try:
        output = site.fab("-H", "host1,host2", "deploy", ok=False)
    finally:
        site.write_config()
    assert "failed before the swap" in output and "swap     point" not in output
    assert {name: site.current(name) for name in before} == before
    assert site.get("host1") == site.get("host2") == "version 6"
