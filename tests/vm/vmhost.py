"""A Vagrant VM under the libvirt provider, driven the way a user drives it (vagrant/, README).

Every vagrant, ssh and fab call runs in the network namespace that libvirtd runs in (see
vagrant/libvirt-host.sh): the VM's network exists only there, and so does the forwarded port.
The VM's state lives in the test's own directory (VAGRANT_DOTFILE_PATH); the box stays cached
between runs (vagrant/build-box.sh, and Vagrant's box store).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
NETNS = "railcar-vm"
FAB = str(Path(sys.executable).parent / "fab")
LOADGEN = REPO / "tests" / "loadgen.py"


def why_no_vm() -> str | None:
    """Why a libvirt VM cannot run here (the skip reason), or None."""
    if not sys.platform.startswith("linux"):
        return "the libvirt VM test runs on Linux hosts only"
    if os.geteuid() != 0:
        return "the libvirt VM test needs root (it starts libvirtd and builds the box)"
    for tool, package in (("vagrant", "vagrant"), ("libvirtd", "libvirt-daemon-system"),
                          ("virsh", "libvirt-clients"), ("qemu-system-x86_64", "qemu-system-x86"),
                          ("ip", "iproute2"), ("ssh", "openssh-client")):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install {package}; .ci/run installs it)"
    plugins = subprocess.run(["vagrant", "plugin", "list"], capture_output=True, text=True,
                             timeout=120).stdout
    if "vagrant-libvirt" not in plugins:
        return "the vagrant-libvirt plugin is missing (apt-get install vagrant-libvirt)"
    box = subprocess.run([str(VAGRANT_DIR / "build-box.sh"), "--path"], capture_output=True,
                         text=True, timeout=30).stdout.strip()
    if not os.path.exists(box):
        for tool in ("mmdebstrap", "grub-mkimage", "sfdisk", "qemu-img"):
            if shutil.which(tool) is None:
                return (f"the box is not built and {tool} is missing (apt-get install "
                        "mmdebstrap fdisk grub-pc-bin grub2-common qemu-utils)")
    return None


class Vm:
    """One VM of vagrant/Vagrantfile, its state under `workdir`."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.netns = ""
        self.timings: dict[str, float] = {}
        self.env = {**os.environ, "VAGRANT_DOTFILE_PATH": str(workdir / ".vagrant"),
                    "VAGRANT_DEFAULT_PROVIDER": "libvirt", "VAGRANT_CHECKPOINT_DISABLE": "1",
                    "RAILCAR_DEPLOY_PUBKEY": str(workdir / "deploy_key.pub")}
        self.ssh_config = workdir / "ssh_config"
        self.known_hosts = workdir / "known_hosts"

    # --- running things ----------------------------------------------------------------------
    def in_netns(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv] if self.netns else argv

    def run(self, argv: list[str], timeout: float, check: bool = True, cwd: Path | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(self.in_netns(argv), capture_output=True, text=True,
                                timeout=timeout, cwd=cwd or VAGRANT_DIR, env=env or self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"{shlex.join(argv)} exited {result.returncode}:\n"
                                 f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def timed(self, name: str, argv: list[str], timeout: float, **kwargs):
        started = time.monotonic()
        result = self.run(argv, timeout, **kwargs)
        self.timings[name] = round(time.monotonic() - started, 1)
        return result

    def vagrant(self, *args: str, timeout: float = 600, check: bool = True):
        return self.run(["vagrant", *args], timeout, check=check)

    def ssh(self, command: str, user_host: str = "railcar-vm", timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
        """A shell command in the VM over plain ssh (faster than `vagrant ssh`)."""
        return self.run(["ssh", "-F", str(self.ssh_config), user_host, command], timeout,
                        check=check)

    def sudo(self, command: str, timeout: float = 120, check: bool = True):
        return self.ssh(f"sudo sh -c {shlex.quote(command)}", timeout=timeout, check=check)

    def fab(self, *args: str, timeout: float = 900) -> str:
        result = self.run([FAB, "-S", str(self.ssh_config), *args], timeout, cwd=REPO,
                          env={**self.env, "RAILCAR_DEPLOY_TRACE": "1"})
        return result.stdout + result.stderr

    # --- the VM's life -----------------------------------------------------------------------
    def start_libvirt(self) -> None:
        out = subprocess.run([str(VAGRANT_DIR / "libvirt-host.sh"), "start", NETNS],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        self.netns = out.stdout.strip()

    def stop_libvirt(self) -> None:
        subprocess.run([str(VAGRANT_DIR / "libvirt-host.sh"), "stop", NETNS],
                       capture_output=True, timeout=120)

    def build_box(self) -> str:
        result = self.timed("box", [str(VAGRANT_DIR / "build-box.sh")], 1500, cwd=REPO)
        self.timings["box_cached"] = float("cached:" in result.stderr)
        return result.stdout.strip()

    def up(self) -> None:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "railcar-vm-test",
                        "-f", str(self.workdir / "deploy_key")], check=True, timeout=60)
        self.timed("up", ["vagrant", "up", "--provider", "libvirt"], 1200)
        self.write_ssh_config()

    def write_ssh_config(self) -> None:
        """vagrant's ssh config for host `railcar-vm` plus the deploy account's key (so
        `vagrant@railcar-vm` and `deploy@railcar-vm` both log in), checking the VM's host key
        against a known_hosts written from vagrant's own authenticated channel."""
        text = self.vagrant("ssh-config", "--host", "railcar-vm", timeout=120).stdout
        text = re.sub(r"(?m)^\s*(StrictHostKeyChecking|UserKnownHostsFile)\s.*$\n?", "", text)
        hostname = re.search(r"(?m)^\s*HostName\s+(\S+)", text).group(1)
        port = re.search(r"(?m)^\s*Port\s+(\d+)", text).group(1)
        key = self.run(["vagrant", "ssh", "-c", "cat /etc/ssh/ssh_host_ed25519_key.pub"],
                       120).stdout.split()
        name = hostname if port == "22" else f"[{hostname}]:{port}"
        self.known_hosts.write_text(f"{name} {key[0]} {key[1]}\n")
        self.ssh_config.write_text(
            text.rstrip() + f"\n  IdentityFile {self.workdir / 'deploy_key'}\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n")

    def destroy(self) -> None:
        self.vagrant("destroy", "-f", timeout=300, check=False)

    # --- HTTP through the forwarded port -----------------------------------------------------
    def http(self, port: int, path: str, timeout: float = 30) -> str:
        """GET http://127.0.0.1:PORT/PATH in the VM's network namespace; the body of a 200."""
        script = ("import sys, urllib.request; sys.stdout.write(urllib.request.urlopen("
                  f"'http://127.0.0.1:{port}{path}', timeout={timeout}).read().decode())")
        return self.run([sys.executable, "-c", script], timeout + 10).stdout

    def wait_http(self, port: int, path: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.http(port, path)
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(3)

    def start_load(self, port: int, path: str, clients: int = 4, max_seconds: float = 600):
        stop = self.workdir / f"stop-load-{time.monotonic_ns()}"
        argv = [sys.executable, str(LOADGEN), "127.0.0.1", str(port), "--path", path,
                "--clients", str(clients), "--max-seconds", str(max_seconds),
                "--stop-file", str(stop)]
        proc = subprocess.Popen(self.in_netns(argv), stdout=subprocess.PIPE, text=True)
        return proc, stop

    @staticmethod
    def stop_load(proc: subprocess.Popen, stop: Path) -> dict:
        stop.touch()
        out, _ = proc.communicate(timeout=120)
        return json.loads(out)
