"""The local demo (run it with demo/run.sh, which installs what it needs first).

    1. start a loopback SSH host: OpenSSH sshd on 127.0.0.1 with generated keys, its host key
       recorded in the generated known_hosts (checked on every connection)
    2. `fab setup` and `fab deploy` examples/flaskapp onto it (this repo's fabfile/); run as
       root, setup creates an app account for it (removed at the end), and the server and
       the app run as that account; run as another user, that user is all three roles
    3. change the app, and `fab deploy` it again while a load generator hammers the site
    4. check that the new version is live and that no request failed
    5. stop the railcar server and sshd (by pid) and remove the temp dir

Traffic goes to 127.0.0.1 only. Exits 1 if a step fails or a request failed.
"""

from __future__ import annotations

import getpass
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from loadgen import Load  # noqa: E402  (tests/loadgen.py: the bounded load generator)
from loopback import SshHosts  # noqa: E402  (tests/loopback.py: loopback sshd hosts)

from railcar.deploy import build  # noqa: E402

FAB = str(Path(sys.executable).parent / "fab")
HOST = "demo-host"
VERSION_ROUTE = '''

@app.get("/version")
def version():
    return "{version}\\n"
'''


def step(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.email=demo@localhost",
                           "-c", "user.name=railcar demo", *args], check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


def commit_version(app: Path, version: str) -> str:
    """The example app with a /version route answering `version`, committed."""
    source = (REPO / "examples" / "flaskapp" / "wsgi.py").read_text()
    (app / "wsgi.py").write_text(source + VERSION_ROUTE.format(version=version))
    git(app, "add", "-A")
    git(app, "commit", "-q", "-m", f"version {version}")
    return git(app, "rev-parse", "--short", "HEAD")


def fab(config: Path, ssh_config: Path, *args: str) -> float:
    """Run this repo's fabfile with the demo's settings on top of fabric.yaml; returns the
    seconds it took."""
    command = [FAB, "-S", str(ssh_config), "-f", str(config), "-H", HOST, *args]
    print("$ fab " + " ".join(args), flush=True)
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, check=True, timeout=900)
    return time.monotonic() - started


def get(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return response.read().decode().strip()


def stop_server(deploy_to: Path) -> None:
    """Stop the railcar server the demo deployed: gracefully, then its processes by pid."""
    railcar = deploy_to / "railcar" / "bin" / "railcar"
    admin = deploy_to / "run" / "admin.sock"
    pids: list[int] = []
    if railcar.exists() and admin.exists():
        status = subprocess.run([str(railcar), "status", "--json", "--admin-socket", str(admin)],
                                capture_output=True, text=True, timeout=30)
        if status.returncode == 0:
            pids = [w["pid"] for a in json.loads(status.stdout)["apps"] for w in a["workers"]
                    if w.get("pid")]
        subprocess.run([str(railcar), "stop", "--admin-socket", str(admin)],
                       capture_output=True, timeout=90)
    pid_file = deploy_to / "run" / "railcar.pid"
    if pid_file.exists():
        try:
            pids.append(int(pid_file.read_text().strip()))
        except ValueError:
            pass
    for pid in pids:
        for _ in range(50):  # up to 5 s to exit after the graceful stop
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def app_account() -> str:
    """The account the app runs as: as root, a new one `fab setup` creates (never root);
    otherwise this user, who then is the deploy and the app account alike."""
    return f"rcdemo{secrets.token_hex(3)}" if os.geteuid() == 0 else getpass.getuser()


def host_python() -> str:
    """The interpreter of the host's virtualenvs: the system's, which every account may run
    (a python3 under /root, as pyenv installs it, is out of the app account's reach)."""
    return "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else "python3"


def remove_account(name: str) -> None:
    if os.geteuid() == 0 and name != getpass.getuser():
        subprocess.run(["userdel", name], capture_output=True, timeout=30)
        subprocess.run(["groupdel", name], capture_output=True, timeout=30)


def run(workdir: Path) -> bool:
    step("starting a loopback SSH host (OpenSSH sshd on 127.0.0.1)")
    hosts = SshHosts(workdir / "ssh")
    user = app_account()
    try:
        host = hosts.start(HOST)
        print(f"{HOST}: 127.0.0.1:{host.port}, deploy root {host.deploy_to}, host key in "
              f"{hosts.known_hosts}")
        return deploy_twice(workdir, hosts, host, user)
    finally:
        step("cleaning up")
        if HOST in hosts.hosts:
            stop_server(hosts.hosts[HOST].deploy_to)
        hosts.stop_all()
        remove_account(user)
        print("stopped the railcar server and sshd" +
              (f", removed the account {user}" if user != getpass.getuser() else ""))


def deploy_twice(workdir: Path, hosts: SshHosts, host, user: str) -> bool:
    app = workdir / "app"
    shutil.copytree(REPO / "examples" / "flaskapp", app)
    git(app, "init", "-q")
    port = free_port()
    wheels = workdir / "wheels"
    wheels.mkdir()
    step("building railcar's wheel (uploaded to the host: it needs no registry for railcar)")
    wheel = build.build_wheel(str(wheels))
    config = workdir / "demo.yaml"
    config.write_text(json.dumps({"railcar": {
        "source": str(app), "ref": "HEAD", "deploy_to": str(host.deploy_to),
        "bind": [f"127.0.0.1:{port}"], "wheel": wheel, "systemd": False,
        "user": user, "deploy_user": getpass.getuser(), "python": host_python()}}, indent=2))

    step(f"fab setup: app account {user}, layout, server virtualenv, env file, service")
    fab(config, hosts.ssh_config, "setup")
    step(f"fab deploy: version 1 ({commit_version(app, '1')})")
    first = fab(config, hosts.ssh_config, "deploy")
    print(f"http://127.0.0.1:{port}/version -> {get(port, '/version')}")

    sha = commit_version(app, "2")
    step(f"fab deploy: version 2 ({sha}) while a load generator sends requests")
    load = Load("127.0.0.1", port, clients=4, max_seconds=300, max_requests=500_000).start()
    try:
        time.sleep(1)
        second = fab(config, hosts.ssh_config, "deploy")
        time.sleep(1)
    finally:
        load.stop()
    live = get(port, "/version")
    failed = load.failures()
    step("result")
    print(f"version {live} is live at http://127.0.0.1:{port}/ ; {len(load.outcomes)} requests "
          f"during the redeploy, {len(failed)} failed")
    print(f"fab deploy took {first:.1f}s the first time (virtualenv built), {second:.1f}s the "
          f"second (virtualenv reused, under load)")
    for outcome in failed[:5]:
        print(f"  failed: {outcome.status} {outcome.error}")
    return live == "2" and not failed and len(load.outcomes) > 0


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="railcar-demo-"))
    try:
        ok = run(workdir)
    except subprocess.CalledProcessError as exc:
        print(f"demo failed: {' '.join(exc.cmd[:1] + exc.cmd[-1:])} exited {exc.returncode}")
        ok = False
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"removed {workdir}")
    print("demo " + ("passed" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
