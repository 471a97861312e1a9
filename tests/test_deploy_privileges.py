"""The production privilege model over real OpenSSH on loopback, with real accounts.

Three roles: `fab setup` logs in as an account whose only power is a NOPASSWD sudo rule; it
creates the app account and the layout; then a plain deploy account (no root, no sudo)
deploys, restarts, rolls back and reads status. The master and every process of the app run
as the app account; a secret handed over through `secrets:` reaches the app through the env
file only (0600, the app account's) and never shows in a command line, the unit, fab's
output or the admin socket's answers. Host keys are checked before anything is sent.
Accounts get unique names and are removed afterwards; traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import psutil
import pytest

from accounts import needs_root
from conftest import gone, wait_for
from test_deploy import Site, deploy_under_load, deploy_wheelhouse  # noqa: F401  (a fixture)
from test_deploy_units import verify_unit

pytestmark = [needs_root(),
              pytest.mark.skipif(not shutil.which("sudo"), reason="needs sudo"),
              pytest.mark.skipif(not shutil.which("runuser"), reason="needs runuser")]

SECRET_NAME = "RC_TEST_SECRET"
SECRET = "s3cret-" + secrets.token_hex(12)
APP = '''
import hashlib, os
{extra}
def application(environ, start_response):
    secret = hashlib.sha256(os.environ.get("{name}", "").encode()).hexdigest()[:12]
    body = ("version {version} " + secret + " " + os.environ.get("PLAIN", "")).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''
SECRET_SUM = hashlib.sha256(SECRET.encode()).hexdigest()[:12]
WITH_SECRET = {SECRET_NAME: SECRET}


class Hosts:
    def __init__(self, site: Site, admin: str, deployer: str):
        self.site, self.admin, self.deployer = site, admin, deployer

    @property
    def root(self) -> Path:
        return self.site.root()

    def fab(self, who: str, *args: str, ok: bool = True, env=WITH_SECRET) -> str:
        output = self.site.fab("-H", f"{who}@host1", *args, ok=ok, env=env)
        assert SECRET not in output
        return output

    def commit(self, version: str, extra: str = "") -> str:
        (self.site.app / "wsgi.py").write_text(
            APP.format(version=version, extra=extra, name=SECRET_NAME))
        git = ["git", "-C", str(self.site.app), "-c", "user.email=t@example.com",
               "-c", "user.name=t"]
        subprocess.run(git + ["add", "wsgi.py", "requirements.txt"], check=True)
        subprocess.run(git + ["commit", "-q", "-m", version], check=True)

    def master(self) -> psutil.Process:
        return psutil.Process(int((self.root / "run" / "railcar.pid").read_text().strip()))

    def app_uid(self) -> int:
        return pwd.getpwnam(self.site.user).pw_uid

    def status(self) -> dict:
        out = subprocess.run([str(self.root / "railcar" / "bin" / "railcar"), "status",
                              "--json", "--admin-socket", str(self.root / "run" / "admin.sock")],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert SECRET not in out.stdout + out.stderr
        return json.loads(out.stdout)

    def assert_all_as_app(self) -> int:
        """The master, the preloader and every worker run as the app account (real,
        effective and saved uid); returns how many processes were checked."""
        master = self.master()
        procs = [master] + master.children(recursive=True)
        workers = {w["pid"] for a in self.status()["apps"] for w in a["workers"] if w["pid"]}
        assert workers and workers <= {p.pid for p in procs}, (workers, procs)
        uid = self.app_uid()
        for proc in procs:
            assert set(proc.uids()) == {uid}, (proc.pid, proc.cmdline(), proc.uids())
        return len(procs)


def no_secret_in_any_cmdline() -> None:
    for proc in psutil.process_iter(["cmdline"]):
        assert SECRET not in " ".join(proc.info["cmdline"] or []), proc.pid


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, deploy_wheelhouse):  # noqa: F811
    site = Site(tmp_path_factory.mktemp("deploy-priv"), deploy_wheelhouse)
    site.create("")
    try:
        admin = site.accounts.login("rca", sudo=True)
        deployer = site.accounts.login("rcd")
        site.ssh.allow(admin)
        site.ssh.allow(deployer)
        # the hook fails the deploy unless it gets the secret (from a file, not argv)
        site.extra = (f"  deploy_user: {deployer}\n  secrets: [{SECRET_NAME}]\n"
                      f"  env: {{PLAIN: plain-value}}\n"
                      f"  hooks: ['test -n \"${SECRET_NAME}\" && echo hook got ${SECRET_NAME}']\n")
        site.add_host("host1")
        yield Hosts(site, admin, deployer)
    finally:
        site.close()


def test_setup_through_a_sudo_rule(hosts):
    output = hosts.fab(hosts.admin, "setup")
    app, deployer, root = hosts.site.user, hosts.deployer, hosts.root
    assert f"created account {app}" in output and f"added {deployer} to group {app}" in output
    owner = {path: pwd.getpwuid(path.stat().st_uid).pw_name
             for path in (root, root / "releases", root / "venvs", root / "railcar",
                          root / "shared", root / "run", root / "log", root / "tmp")}
    assert owner == {root: deployer, root / "releases": deployer, root / "venvs": deployer,
                     root / "railcar": deployer, root / "shared": app, root / "run": app,
                     root / "log": app, root / "tmp": deployer}
    env_file = root / "shared" / "railcar.env"
    mode = env_file.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == hosts.app_uid()
    # the app account may write shared/, run/, log/ and nothing else of the deploy
    for where, allowed in (("shared", True), ("run", True), ("log", True),
                           ("releases", False), ("venvs", False), ("railcar", False),
                           (".", False)):
        probe = subprocess.run(["runuser", "-u", app, "--", "touch", str(root / where / "x")],
                               capture_output=True, timeout=30)
        assert (probe.returncode == 0) == allowed, where
        (root / where / "x").unlink(missing_ok=True)
    # the server runs (the placeholder answers 503 until the first release), as the app
    assert hosts.assert_all_as_app() >= 2
    assert hosts.fab(hosts.admin, "setup").count("unchanged") >= 3


def test_setup_with_a_sudo_password(hosts):
    """A sudo rule that asks for a password: FABRIC_SUDO_PASSWORD gives it; without it,
    setup fails saying how to give it."""
    password = "pw-" + secrets.token_hex(8)
    admin = hosts.site.accounts.login("rcp", sudo_password=password)
    hosts.site.ssh.allow(admin)
    output = hosts.fab(admin, "setup", ok=False)
    assert "needs a password" in output and "FABRIC_SUDO_PASSWORD" in output
    output = hosts.fab(admin, "setup", env={**WITH_SECRET, "FABRIC_SUDO_PASSWORD": password})
    assert password not in output and "start    ok" in output


def test_deploy_as_a_plain_user(hosts):
    deployer = pwd.getpwnam(hosts.deployer)
    groups = subprocess.run(["id", "-Gn", hosts.deployer], capture_output=True, text=True)
    assert "sudo" not in groups.stdout and deployer.pw_uid != 0
    hosts.commit("1")
    output = hosts.fab(hosts.deployer, "deploy")
    assert "deployed" in output
    assert hosts.site.get() == f"version 1 {SECRET_SUM} plain-value"
    hosts.assert_all_as_app()
    no_secret_in_any_cmdline()
    cmdline = " ".join(hosts.master().cmdline())
    assert "--env-file" in cmdline and "plain-value" not in cmdline
    env_file = hosts.root / "shared" / "railcar.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert env_file.stat().st_uid == hosts.app_uid() and SECRET in env_file.read_text()


def test_redeploy_under_load_as_the_deploy_user(hosts):
    hosts.commit("2")
    output, load, _ = deploy_under_load(hosts.site, host=f"{hosts.deployer}@host1",
                                        env=WITH_SECRET)
    assert SECRET not in output
    assert load.failures() == [], load.failures()[:3]
    assert len(load.outcomes) > 20
    assert hosts.site.get().startswith("version 2 ")
    hosts.assert_all_as_app()
    no_secret_in_any_cmdline()


def test_restart_status_releases_rollback_unlock_as_the_deploy_user(hosts):
    before = hosts.assert_all_as_app()
    assert before >= 2
    out = hosts.fab(hosts.deployer, "restart")
    assert "restart  ok" in out
    hosts.assert_all_as_app()
    out = hosts.fab(hosts.deployer, "status")
    assert "site" in out
    assert "good" in hosts.fab(hosts.deployer, "releases")
    hosts.fab(hosts.deployer, "rollback")
    assert hosts.site.get().startswith("version 1 ")
    hosts.assert_all_as_app()
    hosts.fab(hosts.deployer, "rollback", "--release", sorted(hosts.site.states())[-1])
    assert hosts.site.get().startswith("version 2 ")
    assert "was not locked" in hosts.fab(hosts.deployer, "unlock")


def test_a_stopped_server_is_started_by_setup_not_by_the_deploy_user(hosts):
    """The deploy account cannot start the master as the app account: its deploy stops
    before the swap and says to run `fab setup`, which starts it (as the app account)."""
    master = hosts.master()
    subprocess.run([str(hosts.root / "railcar" / "bin" / "railcar"), "stop", "--admin-socket",
                    str(hosts.root / "run" / "admin.sock")], capture_output=True, timeout=90)
    wait_for(lambda: gone(master.pid), 60, what="the master to stop")
    current = hosts.site.current()
    output = hosts.fab(hosts.deployer, "deploy", ok=False)
    assert "the server is not running" in output and "run `fab setup`" in output
    assert "swap     point" not in output and hosts.site.current() == current
    assert "start    ok" in hosts.fab(hosts.admin, "setup")
    hosts.assert_all_as_app()
    assert hosts.site.get().startswith("version 2 ")


def test_a_failing_deploy_masks_the_secret(hosts):
    hosts.commit("3", extra=f'raise RuntimeError("boot failed: " + os.environ["{SECRET_NAME}"])')
    output = hosts.fab(hosts.deployer, "deploy", ok=False)
    assert "RuntimeError: boot failed: *****" in output
    assert hosts.site.get().startswith("version 2 ")
    no_secret_in_any_cmdline()
    hosts.status()


def test_a_changed_secret_needs_setup(hosts):
    releases = sorted(os.listdir(hosts.root / "releases"))
    changed = "other-" + secrets.token_hex(8)
    output = hosts.fab(hosts.deployer, "deploy", ok=False, env={SECRET_NAME: changed})
    assert "run `fab setup`" in output and SECRET_NAME in output and changed not in output
    assert sorted(os.listdir(hosts.root / "releases")) == releases
    output = hosts.fab(hosts.deployer, "deploy", ok=False, env={})
    assert f"{SECRET_NAME} not set" in output


def test_unit_runs_as_the_app_account_sandboxed_and_verifies(hosts, tmp_path):
    from invoke import Config

    from railcar.deploy.paths import Paths
    from railcar.deploy.unit import render_unit
    from railcar.deploy.settings import load

    config = Config(runtime_path=str(hosts.site.project / "fabric.yaml"))
    config.load_runtime()
    settings = load(config, "host1")
    unit = render_unit(Paths(settings.deploy_to), settings)
    assert f"User={hosts.site.user}" in unit and "ProtectSystem=strict" in unit
    assert "NoNewPrivileges=yes" in unit and "CapabilityBoundingSet=\n" in unit
    assert "--env-file" in unit and "--admin-group" in unit
    assert SECRET not in unit and "plain-value" not in unit
    path = tmp_path / "railcar-site.service"
    verify = verify_unit(path, unit)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", str(path)],
                              capture_output=True, text=True, timeout=60)
    exposure = [line for line in security.stdout.splitlines() if "Overall exposure" in line]
    print("\n" + "\n".join(exposure))
    assert exposure and float(exposure[0].split("railcar-site.service:")[1].split()[0]) < 3


# --- host keys ------------------------------------------------------------------------------
class KnownHosts:
    """The loopback hosts' known_hosts file (their ssh_config's UserKnownHostsFile), changed
    for a test and put back afterwards."""

    def __init__(self, site: Site):
        self.path = site.ssh.known_hosts
        self.saved = self.path.read_text()

    def __enter__(self):
        return self.path

    def __exit__(self, *exc):
        self.path.write_text(self.saved)


def fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()[1]


def test_a_changed_host_key_is_refused_before_upload(hosts, tmp_path):
    site = hosts.site
    host = site.hosts["host1"]
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True)
    releases = sorted(os.listdir(hosts.root / "releases"))
    hosts.commit("4")
    with KnownHosts(site) as known_hosts:
        known_hosts.write_text(f"[127.0.0.1]:{host.port} " + " ".join(
            (tmp_path / "other_key.pub").read_text().split()[:2]) + "\n")
        for env in ({}, {"RAILCAR_TRUST_NEW_HOSTS": "1"}):  # trust on first use changes nothing
            output = hosts.fab(hosts.deployer, "deploy", ok=False, env={**WITH_SECRET, **env})
            assert "HOST KEY CHANGED" in output and "host1" in output
            assert fingerprint(host.host_key.with_suffix(".pub")) in output
            assert fingerprint(other.with_suffix(".pub")) in output
            assert "upload" not in output and "lock     ok" not in output
    assert sorted(os.listdir(hosts.root / "releases")) == releases
    assert list((hosts.root / "tmp").iterdir()) == []


def test_an_unknown_host_is_refused_unless_trusted_on_first_use(hosts):
    site = hosts.site
    host = site.hosts["host1"]
    expected = fingerprint(host.host_key.with_suffix(".pub"))
    with KnownHosts(site) as known_hosts:
        known_hosts.write_text("")
        output = hosts.fab(hosts.deployer, "deploy", ok=False)
        assert "unknown host key" in output and expected in output and "host1" in output
        assert "RAILCAR_TRUST_NEW_HOSTS=1" in output and known_hosts.read_text() == ""
        assert "lock     ok" not in output
        # ssh_config cannot turn checking off
        ssh_config = site.ssh.ssh_config
        saved = ssh_config.read_text()
        try:
            ssh_config.write_text(saved.replace("StrictHostKeyChecking yes",
                                                "StrictHostKeyChecking no"))
            assert "StrictHostKeyChecking no" in ssh_config.read_text()
            output = hosts.fab(hosts.deployer, "releases", ok=False)
            assert "unknown host key" in output and known_hosts.read_text() == ""
        finally:
            ssh_config.write_text(saved)
        output = hosts.fab(hosts.deployer, "releases", env={"RAILCAR_TRUST_NEW_HOSTS": "1"})
        assert "trust on first use: recorded" in output and expected in output
        assert f"[127.0.0.1]:{host.port} ssh-ed25519 " in known_hosts.read_text()
        # remembered: checked against the recorded key from now on, without the switch
        output = hosts.fab(hosts.deployer, "releases")
        assert "recorded" not in output and "good" in output


def test_project_known_hosts_file_and_trust_key(hosts):
    """railcar.known_hosts: a project file checked besides the user's; trust_new_hosts: true
    records new keys there."""
    site = hosts.site
    project_file = site.project / "known_hosts"
    extra = site.extra
    try:
        with KnownHosts(site) as known_hosts:
            known_hosts.write_text("")
            site.extra = extra + "  known_hosts: known_hosts\n"
            site.write_config()
            assert "unknown host key" in hosts.fab(hosts.deployer, "releases", ok=False)
            site.extra = extra + "  known_hosts: known_hosts\n  trust_new_hosts: true\n"
            site.write_config()
            output = hosts.fab(hosts.deployer, "releases")
            assert f"in {project_file}" in output and project_file.exists()
            assert known_hosts.read_text() == ""
            site.extra = extra + "  known_hosts: known_hosts\n"
            site.write_config()
            assert "good" in hosts.fab(hosts.deployer, "releases")
    finally:
        site.extra = extra
        site.write_config()
