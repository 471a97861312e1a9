"""vagrant/: the Vagrantfile validates, and provision.sh prepares a host over real SSH.

provision.sh installs packages and adds a user on the machine it runs on, so that test runs
only where the machine is disposable (CI=true, as in .ci/run) or when asked for
(RAILCAR_TEST_PROVISION=1); it uses its own user name and deploy root and removes both.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from conftest import REPO
from loopback import SshHosts

VAGRANT_DIR = REPO / "vagrant"


def validate(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    for name in ("Vagrantfile", "provision.sh", "build-box.sh"):
        shutil.copy(VAGRANT_DIR / name, tmp_path / name)
    return subprocess.run(["vagrant", "validate", *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "VAGRANT_HOME": str(tmp_path / ".vagrant.d"),
                               "VAGRANT_CHECKPOINT_DISABLE": "1", **env})


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed "
                    "(apt-get install vagrant)")
def test_vagrantfile_validates(tmp_path):
    # VirtualBox does not run here or in CI: validate the Vagrantfile itself.
    result = validate(tmp_path, "--ignore-provider")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


def vagrant_libvirt_missing() -> bool:
    if shutil.which("vagrant") is None:
        return True
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True,
                             timeout=120).stdout
    return "vagrant-libvirt" not in plugins


@pytest.mark.skipif(vagrant_libvirt_missing(), reason="vagrant or the vagrant-libvirt plugin "
                    "is not installed (apt-get install vagrant vagrant-libvirt)")
@pytest.mark.parametrize("accel", ["tcg", "kvm", "auto"])
def test_vagrantfile_validates_for_libvirt(tmp_path, accel):
    result = validate(tmp_path, VAGRANT_DEFAULT_PROVIDER="libvirt", RAILCAR_VM_ACCEL=accel)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validated successfully" in result.stdout


@pytest.mark.skipif(shutil.which("vagrant") is None, reason="vagrant is not installed")
def test_vagrantfile_refuses_an_unknown_accel(tmp_path):
    result = validate(tmp_path, VAGRANT_DEFAULT_PROVIDER="libvirt", RAILCAR_VM_ACCEL="hvf")
    assert result.returncode != 0
    assert "RAILCAR_VM_ACCEL must be kvm, tcg or auto" in result.stdout + result.stderr


def test_box_path_names_the_inputs(tmp_path):
    # The cached box is named after the script's hash: an edit makes a new box.
    env = {**os.environ, "RAILCAR_BOX_CACHE": str(tmp_path)}
    env.pop("SUDO_USER", None)
    script = tmp_path / "build-box.sh"
    shutil.copy(VAGRANT_DIR / "build-box.sh", script)

    def path() -> str:
        return subprocess.run([str(script), "--path"], capture_output=True, text=True,
                              env=env, timeout=30, check=True).stdout.strip()

    first = path()
    assert first.startswith(f"{tmp_path}/railcar-bookworm-") and first.endswith(".box")
    assert path() == first
    script.write_text(script.read_text() + "# changed\n")
    assert path() != first


@pytest.mark.parametrize("script", ["provision.sh", "build-box.sh", "libvirt-host.sh"])
def test_scripts_are_valid_bash(script):
    subprocess.run(["bash", "-n", str(VAGRANT_DIR / script)], check=True, timeout=30)


def provision_allowed() -> str | None:
    """Why the provision test must not run here, or None."""
    if os.environ.get("CI") != "true" and os.environ.get("RAILCAR_TEST_PROVISION") != "1":
        return ("provision.sh installs packages and adds a user: runs only with CI=true or "
                "RAILCAR_TEST_PROVISION=1")
    if os.geteuid() != 0:
        return "provision.sh needs root"
    if shutil.which("apt-get") is None or not os.path.exists("/usr/sbin/sshd"):
        return "needs a Debian host with openssh-server"
    return None


@pytest.mark.skipif(provision_allowed() is not None, reason=provision_allowed() or "")
def test_provision_on_a_loopback_host(tmp_path):
    hosts = SshHosts(tmp_path / "ssh")
    tag = uuid.uuid4().hex[:6]
    user = f"rc-deploy-{tag}"
    root = Path(f"/tmp/railcar-provision-{tag}")   # the deploy user must reach it
    key = (tmp_path / "ssh" / "client_key.pub").read_text().strip()
    try:
        hosts.start("vm")
        shutil.copy(VAGRANT_DIR / "provision.sh", tmp_path / "provision.sh")

        def provision() -> str:
            result = hosts.ssh("vm", "env", f"DEPLOY_USER={user}", f"DEPLOY_ROOT={root}",
                               "bash", str(tmp_path / "provision.sh"), key, timeout=900)
            assert result.returncode == 0, result.stdout + result.stderr
            return result.stdout

        first = provision()
        assert f"user {user} owning {root}" in first
        for package in ("python3", "python3-venv", "nginx"):
            status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package],
                                    capture_output=True, text=True, timeout=30).stdout
            assert "ok installed" in status, package
        account = pwd.getpwnam(user)
        assert root.stat().st_uid == account.pw_uid
        keys = Path(account.pw_dir) / ".ssh" / "authorized_keys"
        assert keys.stat().st_uid == account.pw_uid and keys.stat().st_mode & 0o777 == 0o600
        assert keys.read_text().splitlines() == [key]
        venv = subprocess.run(["runuser", "-u", user, "--", "python3", "-m", "venv",
                               str(root / "probe-venv")], capture_output=True, text=True,
                              timeout=120)
        assert venv.returncode == 0, venv.stderr

        state = (account, keys.read_text(), sorted(p.name for p in root.iterdir()))
        assert provision() == first                       # idempotent: same report
        assert (pwd.getpwnam(user), keys.read_text(),
                sorted(p.name for p in root.iterdir())) == state
    finally:
        hosts.stop_all()
        subprocess.run(["userdel", "--remove", user], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
