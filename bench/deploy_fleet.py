"""Time a repeat `fab deploy` to fleets of loopback SSH hosts: 1, 5, 10 and 25 by default.

    python bench/deploy_fleet.py [--sizes 1,5,10,25] [--rounds 3] [--workers 2] [--rate 10]
                                 [--json FILE]

Starts max(sizes) OpenSSH `sshd` hosts on 127.0.0.1 (tests/loopback.py), each with its
own deploy root, port and the same number of workers (`--workers`), runs `fab setup` and a
first `fab deploy` to all of them (hosts in parallel), then for each size, `--rounds` times,
commits a change and times `fab -H host1,...,hostN deploy` (a repeat deploy: the virtualenv
is reused). During every deploy each deployed host serves a paced load (`--rate` requests
per second, one keep-alive client per host); a single failed request fails the run. Rounds
alternate between the sizes so drift on the machine hits all alike.

It prints, per size: the median wall time and its ratio to the smallest size, the CPU-seconds
per host of the deploy (median), split into `fab` (the local process), `ssh` (sshd, the
shells and host-side interpreters the SSH sessions run) and `server` (the railcar masters,
preloaders and workers: restarts, health checks, the load), the median time of each stage
across hosts, and the CPU-bound floor: CPU-seconds per host x hosts / cores, the least wall
time the machine's cores allow when every host lives on them, and `busy`: how busy the
machine's cores were during the deploy (/proc/stat: every process, ours and anyone else's;
on a shared machine the difference between `floor` and `wall` is mostly other work). The
CPU split needs root and the cgroup v1 cpuacct controller (/sys/fs/cgroup/cpuacct); without
them only `fab` is measured (its rusage).

Everything it started is stopped, its temp dir and cgroups removed. Run as root, it lets
`fab setup` create an app account `rc` + random suffix (all hosts are this machine) and
removes it at the end. Needs Fabric (`pip install -e '.[deploy]'`), openssh-server and
network access to nothing but loopback.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "server"))
sys.path.insert(0, str(REPO / "tests"))   # tests/loopback.py: a dev tool, not installed

from loopback import SshHosts, free_port  # noqa: E402

FAB = str(Path(sys.executable).parent / "fab")
CPUACCT = Path("/sys/fs/cgroup/cpuacct")
GROUPS = ("fab", "ssh", "server")
APP = '''def application(environ, start_response):
    body = b"version {version}"
    start_response("200 OK", [("Content-Length", str(len(body)))])
    return [body]
'''
STAGE_LINE = re.compile(r"^\[(?P<host>[^\]]+)\] (?P<stage>[a-z]+)\s+ok (?P<secs>[0-9.]+)s")


class Cpu:
    """CPU-seconds of the deploy's processes by group: cgroup v1 cpuacct groups (root), or
    only fab's own rusage without them."""

    def __init__(self):
        self.root = CPUACCT / f"railcar-fleet-{os.getpid()}"
        self.cgroups = False
        if os.geteuid() == 0 and (CPUACCT / "cpuacct.usage").exists():
            try:
                for name in GROUPS:
                    (self.root / name).mkdir(parents=True, exist_ok=True)
                self.cgroups = True
            except OSError:
                self.remove()

    def enter(self, group: str, pid: int) -> None:
        if self.cgroups:
            (self.root / group / "cgroup.procs").write_text(f"{pid}\n")

    def adopt_servers(self) -> int:
        """Move every process of the ssh group that is not sshd (the railcar servers that
        `fab setup` started through SSH: they outlive their session) to the server group;
        what they fork later stays there."""
        moved = 0
        if not self.cgroups:
            return moved
        for pid in (self.root / "ssh" / "cgroup.procs").read_text().split():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                if comm != "sshd":
                    self.enter("server", int(pid))
                    moved += 1
            except OSError:
                pass
        return moved

    def usage(self) -> dict[str, float]:
        if not self.cgroups:
            return {}
        return {name: int((self.root / name / "cpuacct.usage").read_text()) / 1e9
                for name in GROUPS}

    def remove(self) -> None:
        if not self.root.exists():
            return
        for name in GROUPS:         # a group with tasks left cannot go: move them out first
            group = self.root / name
            if group.exists():
                for pid in (group / "cgroup.procs").read_text().split():
                    try:
                        (CPUACCT / "cgroup.procs").write_text(pid + "\n")
                    except OSError:
                        pass
                try:
                    group.rmdir()
                except OSError:
                    pass
        try:
            self.root.rmdir()
        except OSError:
            pass


class Load:
    """One paced keep-alive client per host during a deploy; every failure is kept."""

    def __init__(self, ports: list[int], rate: float, max_seconds: float = 600):
        self.ports, self.interval, self.max_seconds = ports, 1.0 / rate, max_seconds
        self.requests = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(port,), daemon=True)
                         for port in ports]

    def __enter__(self) -> "Load":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, port: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        conn = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/")
                response = conn.getresponse()
                body = response.read()
                failed = None if response.status == 200 else f"{response.status} {body[:80]!r}"
                if response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                failed = repr(exc)
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                self.requests += 1
                if failed:
                    self.failures.append(f"127.0.0.1:{port}: {failed}")
            self._stop.wait(self.interval)
        if conn is not None:
            conn.close()


class Fleet:
    def __init__(self, workdir: Path, size: int, workers: int, cpu: Cpu):
        self.workdir = workdir
        self.cpu = cpu
        self.ssh = SshHosts(workdir / "ssh")
        self.names = [f"host{i + 1}" for i in range(size)]
        self.ports: dict[str, int] = {}
        self.workers = workers
        self.app = workdir / "app"
        self.project = workdir / "project"
        self.wheels = workdir / "wheels"
        self.user = "rc" + secrets.token_hex(3)     # the app account `fab setup` creates

    def create(self) -> None:
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir",
                        str(self.wheels), f"{REPO}[server]", "virtualenv"], check=True,
                       timeout=900)
        self.app.mkdir()
        self.project.mkdir()
        subprocess.run(["git", "init", "-q", str(self.app)], check=True)
        (self.project / "fabfile.py").write_text("from railcar.deploy import ns\n")
        per_host = ""
        for name in self.names:
            host = self.ssh.start(name)
            self.cpu.enter("ssh", host.proc.pid)
            self.ports[name] = free_port()
            per_host += (f"    {name}: {{deploy_to: {host.deploy_to}, "
                         f"bind: ['127.0.0.1:{self.ports[name]}']}}\n")
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
  workers: {self.workers}
  health_timeout: 30
  per_host:
{per_host}""")

    def commit(self, version: str) -> None:
        (self.app / "wsgi.py").write_text(APP.format(version=version))
        git = ["git", "-C", str(self.app), "-c", "user.email=b@example.com", "-c", "user.name=b"]
        subprocess.run(git + ["add", "wsgi.py"], check=True)
        subprocess.run(git + ["commit", "-q", "-m", version], check=True)

    def fab(self, hosts: list[str], *args: str) -> tuple[float, float, str]:
        """Run fab; (wall seconds, fab's CPU-seconds from rusage, its output)."""
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        proc = subprocess.Popen([FAB, "-H", ",".join(hosts), *args], cwd=self.project,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=self._enter_fab)
        output, _ = proc.communicate(timeout=1800)
        took = time.monotonic() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise SystemExit(f"fab {' '.join(args)} failed:\n{output}")
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return took, cpu, output

    def login_cost(self, cpu: Cpu, times: int = 5) -> float | None:
        """CPU-seconds of one SSH connection that runs `true` (median of `times`), on the
        hosts' side: part of every host's `ssh` share that railcar does not choose."""
        if not cpu.cgroups:
            return None
        costs = []
        for _ in range(times):
            before = cpu.usage()["ssh"]
            subprocess.run(["ssh", "-F", str(self.ssh.ssh_config), self.names[0], "true"],
                           check=True, capture_output=True, timeout=60)
            costs.append(cpu.usage()["ssh"] - before)
        return statistics.median(costs)

    def _enter_fab(self) -> None:
        if self.cpu.cgroups:
            self.cpu.enter("fab", os.getpid())

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


def machine_busy() -> float:
    """CPU-seconds all cores spent busy since boot (/proc/stat), every process's."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)      # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def stage_times(output: str) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for line in output.splitlines():
        match = STAGE_LINE.match(line)
        if match:
            found.setdefault(match["stage"], []).append(float(match["secs"]))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,5,10,25")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="workers per host (all sizes)")
    parser.add_argument("--rate", type=float, default=10,
                        help="requests per second to each deployed host during a deploy")
    parser.add_argument("--json")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    cores = os.cpu_count() or 1
    workdir = Path(tempfile.mkdtemp(prefix="railcar-fleet-"))
    cpu = Cpu()
    fleet = Fleet(workdir, max(sizes), args.workers, cpu)
    runs: dict[int, list[dict]] = {size: [] for size in sizes}
    try:
        fleet.create()
        fleet.commit("0")
        print(f"setup of {len(fleet.names)} hosts: {fleet.fab(fleet.names, 'setup')[0]:.1f}s",
              flush=True)
        print(f"first deploy: {fleet.fab(fleet.names, 'deploy')[0]:.1f}s", flush=True)
        cpu.adopt_servers()
        login = fleet.login_cost(cpu)
        if login is not None:
            print(f"one SSH connection running `true` on a host: {login:.3f} CPU-s in the ssh "
                  "group (sshd and the SSH user's login shell with its rc files; a deploy "
                  "opens one per host)", flush=True)
        for round_ in range(args.rounds):
            for size in sizes:
                hosts = fleet.names[:size]
                fleet.commit(f"{round_}-{size}")
                before, busy = cpu.usage(), machine_busy()
                with Load([fleet.ports[name] for name in hosts], args.rate) as load:
                    took, fab_cpu, output = fleet.fab(hosts, "deploy")
                after, busy = cpu.usage(), machine_busy() - busy
                if load.failures:
                    raise SystemExit(f"{len(load.failures)} of {load.requests} requests failed "
                                     f"during the deploy to {size} host(s): "
                                     + "; ".join(load.failures[:5]))
                used = {k: (after[k] - before[k]) / size for k in after} or \
                    {"fab": fab_cpu / size}
                runs[size].append({"seconds": took, "cpu_per_host": used,
                                   "busy": busy / took / cores,
                                   "requests": load.requests, "stages": stage_times(output)})
                print(f"round {round_ + 1}: {size:>3} host(s) {took:6.1f}s  "
                      f"{sum(used.values()):.2f} CPU-s/host  cores {busy / took / cores:4.0%} "
                      f"busy  {load.requests} requests, 0 failed",
                      flush=True)
    finally:
        fleet.stop()
        cpu.remove()
        shutil.rmtree(workdir, ignore_errors=True)
    report(runs, sizes, args.rounds, cores)
    if args.json:
        Path(args.json).write_text(json.dumps({str(k): v for k, v in runs.items()}, indent=1))
    return 0


def report(runs: dict[int, list[dict]], sizes: list[int], rounds: int, cores: int) -> None:
    def median(values) -> float:
        return statistics.median(values) if values else 0.0

    base = median([r["seconds"] for r in runs[sizes[0]]])
    print(f"\nrepeat deploy, median of {rounds} (load average {os.getloadavg()[0]:.1f}, "
          f"{cores} cores):")
    groups = [g for g in GROUPS if any(g in r["cpu_per_host"] for r in runs[sizes[0]])]
    print(f"  {'hosts':>5} {'wall':>7} {'ratio':>6}  CPU-s/host: "
          + " ".join(f"{g:>6}" for g in groups) + f" {'total':>6}  {'floor':>6} {'busy':>5}")
    for size in sizes:
        wall = median([r["seconds"] for r in runs[size]])
        per = {g: median([r["cpu_per_host"].get(g, 0.0) for r in runs[size]]) for g in groups}
        total = median([sum(r["cpu_per_host"].values()) for r in runs[size]])
        floor = total * size / cores
        busy = median([r["busy"] for r in runs[size]])
        print(f"  {size:>5} {wall:6.1f}s {wall / base:5.2f}x  {'':11} "
              + " ".join(f"{per[g]:6.2f}" for g in groups)
              + f" {total:6.2f}  {floor:5.1f}s {busy:5.0%}")
    print("  (floor: CPU-s/host x hosts / cores, the least wall time the cores allow;\n"
          "   busy: the machine's cores busy during the deploy, every process's work)")
    print("\nmedian seconds of each stage across hosts:")
    names: list[str] = []
    for size in sizes:
        for run in runs[size]:
            names += [n for n in run["stages"] if n not in names]
    print(f"  {'hosts':>5} " + " ".join(f"{n[:8]:>8}" for n in names))
    for size in sizes:
        cells = []
        for name in names:
            values = [v for r in runs[size] for v in r["stages"].get(name, [])]
            cells.append(f"{median(values):8.2f}" if values else f"{'-':>8}")
        print(f"  {size:>5} " + " ".join(cells))


if __name__ == "__main__":
    sys.exit(main())
