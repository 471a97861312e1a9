"""Loopback SSH hosts: real OpenSSH `sshd` on 127.0.0.1, one per host, as this user.

For the deploy tests, the demo (demo/run.sh) and bench/deploy_fleet.py (which put tests/ on
sys.path); it is not part of the installed package. Each host gets a
generated host key, its own port and its own deploy root. The accounts that may log in are
those given a key file with `allow(user)` (this user's from the start): each gets the shared
generated client key, so `fab -H deploy@host1` logs in as the local account `deploy`. Root
may log in by key only, and only in this generated config. An ssh_config file maps each host
name to its port, user, key and the generated known_hosts file, which holds every host's key
(written when the host starts: host keys are checked, never skipped), so Fabric
(`ssh_config_path`) and plain `ssh -F` reach it by name. Every sshd is ended by its pid
(`stop_all`, which also removes the shared dir).

The key files, known_hosts and the deploy roots live in `shared_dir`, a temp dir others may
traverse (0755), since sshd reads a user's keys as that user, and app accounts must reach
their deploy root.
"""

from __future__ import annotations

import getpass
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"

SSHD_CONFIG = """\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
AuthorizedKeysFile {keys_dir}/%u
PidFile {pid_file}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
MaxStartups 50:30:100
MaxSessions 50
LogLevel ERROR
Subsystem sftp internal-sftp
"""

CLIENT_CONFIG = """\
Host {name}
    HostName 127.0.0.1
    Port {port}
    User {user}
    IdentityFile {key}
    IdentitiesOnly yes
    StrictHostKeyChecking yes
    UserKnownHostsFile {known_hosts}
    LogLevel ERROR
"""


def _ephemeral_ports() -> range:
    """The kernel's range for outgoing connections' local ports."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as file:
            low, high = (int(part) for part in file.read().split())
        return range(low, high + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 outside the ephemeral range: a host's port is chosen
    minutes before its server binds it (a fleet's setup), and in between any outgoing
    connection (ssh, pip) could be given a port of the ephemeral range."""
    ephemeral = _ephemeral_ports()
    low = 10000 if ephemeral.start > 12000 else 1024
    top = ephemeral.start if ephemeral.start > low + 1000 else 65536
    for _ in range(200):
        port = secrets.randbelow(top - low) + low
        if port in ephemeral:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # crowded: any free port
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True, timeout=30)
    return path


@dataclass
class SshHost:
    name: str
    port: int
    workdir: Path
    root: Path                          # its deploy root (in the shared dir)
    proc: subprocess.Popen | None = None
    host_key: Path | None = None

    @property
    def deploy_to(self) -> Path:
        return self.root

    @property
    def known_hosts_line(self) -> str:
        """This host's known_hosts entry (as OpenSSH names a host on a port other than 22)."""
        kind, key = (self.host_key.with_suffix(".pub")).read_text().split()[:2]
        return f"[127.0.0.1]:{self.port} {kind} {key}\n"

    def wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd for {self.name} exited: {self.proc.stderr.read()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    if sock.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"sshd for {self.name} not answering on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


class SshHosts:
    """Start named loopback hosts; `ssh_config` names them for Fabric."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.client_key = keygen(workdir / "client_key")
        self.shared_dir = Path(tempfile.mkdtemp(prefix="railcar-ssh-"))
        self.shared_dir.chmod(0o755)
        self.keys_dir = self.shared_dir / "keys"
        self.keys_dir.mkdir(mode=0o755)
        self.known_hosts = self.shared_dir / "known_hosts"
        self.known_hosts.touch()
        self.ssh_config = workdir / "ssh_config"
        self.hosts: dict[str, SshHost] = {}
        self.allow(self.user)

    def allow(self, user: str) -> None:
        """Let the local account `user` log in with the generated client key."""
        path = self.keys_dir / user
        path.write_text((self.workdir / "client_key.pub").read_text())
        path.chmod(0o644)

    def start(self, name: str) -> SshHost:
        if not os.path.exists(SSHD):
            raise RuntimeError(f"{SSHD} is missing: install openssh-server")
        if os.geteuid() == 0:  # sshd run by root wants its privilege separation dir
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        hostdir = self.workdir / name
        hostdir.mkdir()
        host = SshHost(name, free_port(), hostdir, self.shared_dir / "srv" / name)
        host.root.parent.mkdir(mode=0o755, exist_ok=True)
        host.host_key = keygen(hostdir / "host_key")
        config = hostdir / "sshd_config"
        config.write_text(SSHD_CONFIG.format(
            port=host.port, host_key=host.host_key, keys_dir=self.keys_dir,
            pid_file=hostdir / "sshd.pid"))
        host.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.hosts[name] = host
        with self.known_hosts.open("a") as handle:
            handle.write(host.known_hosts_line)
        with self.ssh_config.open("a") as handle:
            handle.write(CLIENT_CONFIG.format(name=name, port=host.port, user=self.user,
                                              key=self.client_key, known_hosts=self.known_hosts))
        host.wait_ready()
        return host

    def ssh(self, name: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), name, shlex.join(argv)],
                              capture_output=True, text=True, timeout=timeout)

    def stop_all(self) -> None:
        """Stop every sshd and remove the shared dir (key files, known_hosts, deploy roots)."""
        for host in self.hosts.values():
            host.stop()
        shutil.rmtree(self.shared_dir, ignore_errors=True)
