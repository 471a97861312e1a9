"""Time a repeat `fab deploy` to fleets of loopback SSH hosts: 1, 5, 10 and 25 by default.

    python bench/deploy_fleet.py [--sizes 1,5,10,25] [--rounds 3] [--json FILE]

Starts max(sizes) OpenSSH `sshd` hosts on 127.0.0.1 (tests/loopback.py), each with its
own deploy root and port, runs `fab setup` and a first `fab deploy` to all of them (hosts in
parallel), then for each size, `--rounds` times, commits a change and times `fab -H
host1,...,hostN deploy` (a repeat deploy: the virtualenv is reused). Rounds alternate
between the sizes so drift on the machine hits all alike. Prints the median per size and its
ratio to one host. Everything it started is stopped, its temp dir removed. Run as root, it
lets `fab setup` create an app account `rc` + random suffix (all hosts are this machine) and
removes it at the end. Needs Fabric (`pip install -e '.[deploy]'`), openssh-server and
network access to nothing but loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "server"))
sys.path.insert(0, str(REPO / "tests"))   # tests/loopback.py: a dev tool, not installed

from loopback import SshHosts, free_port  # noqa: E402

FAB = str(Path(sys.executable).parent / "fab")
APP = '''def application(environ, start_response):
    body = b"version {version}"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
'''


class Fleet:
    def __init__(self, workdir: Path, size: int):
        self.workdir = workdir
        self.ssh = SshHosts(workdir / "ssh")
        self.names = [f"host{i + 1}" for i in range(size)]
        self.app = workdir / "app"
        self.project = workdir / "project"
        self.wheels = workdir / "wheels"
        self.user = "rc" + secrets.token_hex(3)     # the app account `fab setup` creates

    def create(self) -> None:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir",
                        str(self.wheels), f"{REPO}[server]", "virtualenv"], check=True, timeout=900)
        self.app.mkdir()
        self.project.mkdir()
        subprocess.run(["git", "init", "-q", str(self.app)], check=True)
        (self.project / "fabfile.py").write_text("from railcar.deploy import ns\n")
        per_host = ""
        for name in self.names:
            host = self.ssh.start(name)
            per_host += (f"    {name}: {{deploy_to: {host.deploy_to}, "
                         f"bind: ['127.0.0.1:{free_port()}']}}\n")
        (self.project / "fabric.yaml").write_text(f"""\
ssh_config_path: {self.ssh.ssh_config}
railcar:
  app: fleet
  user: {self.user}
  python: /usr/bin/python3
  source: {self.app}
  wheelhouse: {self.wheels}
  pip_args: [--no-index]
  keep_releases: 2
  health_timeout: 30
  per_host:
{per_host}""")

    def commit(self, version: str) -> None:
        (self.app / "wsgi.py").write_text(APP.format(version=version))
        git = ["git", "-C", str(self.app), "-c", "user.email=b@example.com", "-c", "user.name=b"]
        subprocess.run(git + ["add", "wsgi.py"], check=True)
        subprocess.run(git + ["commit", "-q", "-m", version], check=True)

    def fab(self, hosts: list[str], *args: str) -> float:
        started = time.monotonic()
        result = subprocess.run([FAB, "-H", ",".join(hosts), *args], cwd=self.project,
                                capture_output=True, text=True, timeout=1800)
        took = time.monotonic() - started
        if result.returncode != 0:
            raise SystemExit(f"fab {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
        return took

    def stop(self) -> None:
        for name in self.names:
            root = self.ssh.hosts[name].deploy_to if name in self.ssh.hosts else None
            railcar = root / "railcar" / "bin" / "railcar" if root else None
            if railcar and railcar.exists():
                subprocess.run([str(railcar), "stop", "--admin-socket",
                                str(root / "run" / "admin.sock")], capture_output=True,
                               timeout=120)
        self.ssh.stop_all()
        if os.geteuid() == 0:
            subprocess.run(["userdel", self.user], capture_output=True, timeout=60)
            subprocess.run(["groupdel", self.user], capture_output=True, timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,5,10,25")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    workdir = Path(tempfile.mkdtemp(prefix="railcar-fleet-"))
    fleet = Fleet(workdir, max(sizes))
    times: dict[int, list[float]] = {size: [] for size in sizes}
    try:
        fleet.create()
        fleet.commit("0")
        print(f"setup of {len(fleet.names)} hosts: {fleet.fab(fleet.names, 'setup'):.1f}s",
              flush=True)
        print(f"first deploy: {fleet.fab(fleet.names, 'deploy'):.1f}s", flush=True)
        for round_ in range(args.rounds):
            for size in sizes:
                fleet.commit(f"{round_}-{size}")
                took = fleet.fab(fleet.names[:size], "deploy")
                times[size].append(took)
                print(f"round {round_ + 1}: {size:>3} host(s) {took:6.1f}s", flush=True)
    finally:
        fleet.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    base = statistics.median(times[sizes[0]])
    print(f"\nrepeat deploy, median of {args.rounds} (load average {os.getloadavg()[0]:.1f}):")
    for size in sizes:
        median = statistics.median(times[size])
        print(f"  {size:>3} host(s): {median:6.1f}s  {median / base:5.2f}x one host")
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in times.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
