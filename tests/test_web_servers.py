"""Several apps in one railcar behind real nginx and Apache on loopback, with the configs
`railcar config` renders: Host routing, separate virtualenvs, static files, forwarded client
address and scheme, a rolling restart under load, and a broken app next to a working one."""

from __future__ import annotations

import http.client
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from conftest import free_port, gone, railcar_command, wait_for
from loadgen import Load

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
IS_ROOT = os.getuid() == 0
APP_USER = "nobody"     # as root, the apps' roots belong to this user, so workers run as it
WEB_USER = "www-data"   # as root, nginx and Apache workers run as this user
pytestmark = pytest.mark.skipif(not (os.access(NGINX, os.X_OK) and os.access(APACHE, os.X_OK)),
                                reason="needs nginx and apache2 (apt-get install nginx apache2)")

APP = '''
import json, os
import demo_dep

def application(environ, start_response):
    body = json.dumps({
        "app": os.environ["APP_NAME"], "demo_dep": demo_dep.VERSION, "uid": os.getuid(),
        "pid": os.getpid(), "path": environ["PATH_INFO"], "release": os.path.basename(os.getcwd()),
        "remote_addr": environ["REMOTE_ADDR"], "scheme": environ["wsgi.url_scheme"],
        "host": environ.get("HTTP_HOST"), "request_id": environ["HTTP_X_REQUEST_ID"],
        "request_start": environ.get("HTTP_X_REQUEST_START")}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''
DEMO_SETUP = '''
from setuptools import setup
setup(name="demo-dep", version="{version}", py_modules=["demo_dep"])
'''


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(self.path)


def get(port: int, host: str, path: str = "/", headers=None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host, **(headers or {})})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get_unix(sock_path: str, path: str = "/", headers=None) -> tuple[int, bytes]:
    conn = UnixHTTPConnection(sock_path)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def interpreter() -> str:
    """As root the workers run as APP_USER, who cannot always reach this test run's Python
    (e.g. one under /root): the venvs then come from the system's python3."""
    system = "/usr/bin/python3"
    if IS_ROOT and os.access(system, os.X_OK):
        return system
    return sys.executable


def build_venv(path: Path, wheelhouse: Path, demo_dir: Path) -> Path:
    subprocess.run([sys.executable, "-m", "virtualenv", "-q", "--no-download", "-p",
                    interpreter(), str(path)], check=True, timeout=300)
    python = path / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                    str(wheelhouse), "--no-build-isolation", "railcar", str(demo_dir)],
                   check=True, timeout=600)
    return python


def demo_package(base: Path, version: str) -> Path:
    directory = base / f"demo-dep-{version}"
    directory.mkdir()
    (directory / "setup.py").write_text(DEMO_SETUP.format(version=version))
    (directory / "demo_dep.py").write_text(f'VERSION = "{version}"\n')
    return directory


def make_release(app_dir: Path, name: str, static_text: str) -> Path:
    release = app_dir / "releases" / name
    (release / "static").mkdir(parents=True)
    (release / "wsgi.py").write_text(APP)
    (release / "static" / "version.txt").write_text(static_text)
    return release


def point_current(app_dir: Path, release: str) -> None:
    """Swap `current` atomically (symlink to a temporary name, then rename over)."""
    tmp = app_dir / "current.tmp"
    tmp.symlink_to(Path("releases") / release)
    os.replace(tmp, app_dir / "current")


def give_to_app_user(path: Path) -> None:
    if IS_ROOT:
        entry = pwd.getpwnam(APP_USER)
        for directory, dirs, files in os.walk(path):
            for name in [directory] + [os.path.join(directory, n) for n in dirs + files]:
                os.lchown(name, entry.pw_uid, entry.pw_gid)


class Processes:
    """Processes this module starts, each ended by its pid at teardown."""

    def __init__(self):
        self.procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], output: Path, **kwargs) -> subprocess.Popen:
        with open(output, "ab") as sink:
            proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, **kwargs)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


class Site:
    """One railcar serving alpha and beta, nginx and Apache in front of it."""

    def __init__(self, base: Path):
        self.base = base
        self.run_dir = base / "run"
        self.config = base / "railcar.toml"
        self.admin_socket = str(base / "admin.sock")
        self.log = base / "railcar.log"
        self.pid_file = base / "railcar.pid"
        self.nginx_port = free_port()
        self.apache_port = free_port()
        self.workers_seen: set[int] = set()

    def railcar(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(railcar_command() + list(args), capture_output=True, text=True,
                              timeout=timeout)

    def status(self) -> dict:
        result = self.railcar("status", "--json", "--admin-socket", self.admin_socket,
                              timeout=30)
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        for app in data["apps"]:
            self.workers_seen.update(w["pid"] for w in app["workers"] if w["pid"])
        return data

    def serving(self, wanted: dict[str, int]) -> bool:
        if not os.path.exists(self.admin_socket):
            return False
        try:
            return all(len(self.pids(app)) == count for app, count in wanted.items())
        except AssertionError:
            return False

    def pids(self, app: str) -> set[int]:
        [entry] = [a for a in self.status()["apps"] if a["name"] == app]
        return {w["pid"] for w in entry["workers"] if w["state"] == "ready"}

    def render(self, kind: str, *args: str) -> Path:
        out = self.base / f"rendered-{kind}.conf"
        result = self.railcar("config", kind, "--config", str(self.config), "-o", str(out), *args)
        assert result.returncode == 0, result.stderr
        return out

    def write_nginx_conf(self) -> Path:
        site = self.render("nginx", "--listen", f"127.0.0.1:{self.nginx_port}")
        tmp = self.base / "nginx-tmp"
        tmp.mkdir(exist_ok=True)
        user = f"user {WEB_USER};" if IS_ROOT else ""
        temp_paths = "\n".join(f"    {kind}_temp_path {tmp}/{kind};"
                               for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = self.base / "nginx.conf"
        conf.write_text(f"""{user}
worker_processes 1;
pid {self.base}/nginx.pid;
error_log {self.base}/nginx-error.log;
events {{ worker_connections 256; }}
http {{
    access_log {self.base}/nginx-access.log;
{temp_paths}
    include {site};
}}
""")
        return conf

    def write_apache_conf(self) -> Path:
        vhost = self.render("apache", "--listen", f"127.0.0.1:{self.apache_port}")
        modules = "\n".join(f"LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so" for name in
                            ("mpm_event", "authz_core", "alias", "headers", "mime", "proxy",
                             "proxy_http"))
        user = f"User {WEB_USER}\nGroup {WEB_USER}" if IS_ROOT else ""
        conf = self.base / "apache.conf"
        conf.write_text(f"""ServerRoot /etc/apache2
ServerName localhost
{modules}
{user}
PidFile {self.base}/apache.pid
ErrorLog {self.base}/apache-error.log
Mutex file:{self.base}
DefaultRuntimeDir {self.base}
TypesConfig /etc/mime.types
Listen 127.0.0.1:{self.apache_port}
Include {vhost}
""")
        return conf


def write_config(path: Path, run_dir: Path, apps: list[dict]) -> None:
    lines = ["[server]", f'run_dir = "{run_dir}"', f'log_file = "{path.parent}/railcar.log"',
             "graceful_timeout = 10", ""]
    for app in apps:
        lines.append("[[apps]]")
        for key, value in app.items():
            if isinstance(value, dict):
                value = "{ " + ", ".join(f'{k} = "{v}"' for k, v in value.items()) + " }"
            else:
                value = json.dumps(value)
            lines.append(f"{key} = {value}")
        lines.append("")
    path.write_text("\n".join(lines))


def _daemon(cmd: list[str], output: Path) -> None:
    """Run a command that daemonizes (so its processes outlive no test's own children)."""
    with open(output, "ab") as sink:
        result = subprocess.run(cmd, stdout=sink, stderr=subprocess.STDOUT, timeout=180)
    assert result.returncode == 0, f"{cmd[0]} failed: {_tail(output)}"


def _stop_daemon(pid_file: Path, sig: int = signal.SIGTERM) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    wait_for(lambda: gone(pid), 60, what=f"{pid_file.name} process {pid} to exit")


@pytest.fixture(scope="module")
def site(wheelhouse):
    """Started as daemons: the workers a test's restart creates are not that test's children."""
    base = Path(tempfile.mkdtemp(prefix="railcar-web-", dir="/tmp"))
    os.chmod(base, 0o755)       # nginx, Apache and the apps' user must reach into it
    site = Site(base)
    try:
        venvs = {}
        for name, version in (("alpha", "1.0"), ("beta", "2.0")):
            venvs[name] = build_venv(base / f"venv-{name}", wheelhouse,
                                     demo_package(base, version))
            make_release(base / name, "r1", f"{name} static r1\n")
            point_current(base / name, "r1")
            give_to_app_user(base / name)
        write_config(site.config, site.run_dir, [
            {"name": name, "root": str(base / name / "current"), "python": str(venvs[name]),
             "workers": 2, "server_names": [f"{name}.test"], "static_dir": "static",
             "trusted_proxies": ["unix"], "env": {"APP_NAME": name}}
            for name in ("alpha", "beta")])
        site.venvs = venvs
        _daemon(railcar_command() + ["start", "--daemon", "--config", str(site.config),
                                     "--admin-socket", site.admin_socket,
                                     "--pid-file", str(site.pid_file)], base / "railcar.out")
        wait_for(lambda: site.serving({"alpha": 2, "beta": 2}), 120,
                 what=f"railcar to serve both apps ({site.log})")
        _daemon([NGINX, "-c", str(site.write_nginx_conf()), "-p", f"{base}/"],
                base / "nginx.out")
        _daemon([APACHE, "-f", str(site.write_apache_conf())], base / "apache.out")
        for port, log in ((site.nginx_port, "nginx.out"), (site.apache_port, "apache.out")):
            try:
                wait_for(lambda: _answers(port), 30, what=f"web server on port {port}")
            except AssertionError:
                raise AssertionError(f"no answer on {port}: {_tail(base / log)}\n"
                                     f"{_tail(site.log)}") from None
        yield site
    finally:
        _stop_daemon(base / "apache.pid")
        _stop_daemon(base / "nginx.pid")
        _stop_daemon(site.pid_file)
        for pid in site.workers_seen:
            wait_for(lambda: gone(pid), 30, what=f"worker {pid} to exit")
        shutil.rmtree(base, ignore_errors=True)


def _tail(path: Path) -> str:
    try:
        return path.read_text()[-3000:]
    except OSError as exc:
        return str(exc)


def _answers(port: int) -> bool:
    try:
        return get(port, "alpha.test")[0] == 200
    except OSError:
        return False


def body(port: int, host: str, path: str = "/", **kwargs) -> dict:
    status, data = get(port, host, path, **kwargs)
    assert status == 200, data
    return json.loads(data)


# --- the rendered configs -----------------------------------------------------------------

def test_rendered_configs_pass_the_tools_checks(site):
    result = subprocess.run([NGINX, "-t", "-c", str(site.base / "nginx.conf"),
                             "-p", f"{site.base}/"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    result = subprocess.run([APACHE, "-t", "-f", str(site.base / "apache.conf")],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    unit = site.render("systemd")
    text = unit.read_text()
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert f"--config {site.config}" in text and "Restart=on-failure" in text
    rotate = site.render("logrotate").read_text()
    assert str(site.log) in rotate and "USR1" in rotate
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: unit not verified")
    service = site.base / "railcar-test.service"
    shutil.copy(unit, service)
    result = subprocess.run([analyze, "verify", str(service)], capture_output=True, text=True,
                            timeout=60)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if str(service) in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


# --- routing, virtualenvs, accounts, sockets ----------------------------------------------

@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_apps_routed_by_host_each_with_its_own_virtualenv(site, server):
    port = site.nginx_port if server == "nginx" else site.apache_port
    alpha, beta = body(port, "alpha.test"), body(port, "beta.test")
    assert (alpha["app"], alpha["demo_dep"]) == ("alpha", "1.0")
    assert (beta["app"], beta["demo_dep"]) == ("beta", "2.0")
    assert alpha["pid"] in site.pids("alpha") and beta["pid"] in site.pids("beta")
    if IS_ROOT:
        nobody = pwd.getpwnam(APP_USER).pw_uid
        assert alpha["uid"] == beta["uid"] == nobody


def test_sockets_are_for_the_web_server_and_the_admin_socket_for_root(site):
    for app in ("alpha", "beta"):
        info = os.stat(site.run_dir / f"{app}.sock")
        assert info.st_mode & 0o777 == 0o660
        if IS_ROOT:
            assert info.st_uid == pwd.getpwnam(APP_USER).pw_uid
            assert info.st_gid == pwd.getpwnam(WEB_USER).pw_gid
    assert os.stat(site.admin_socket).st_mode & 0o777 == 0o600


# --- forwarded client address and scheme ---------------------------------------------------

@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_app_sees_the_clients_address_and_the_proxys_scheme(site, server):
    port = site.nginx_port if server == "nginx" else site.apache_port
    seen = body(port, "alpha.test")
    assert (seen["remote_addr"], seen["scheme"], seen["host"]) == ("127.0.0.1", "http",
                                                                    "alpha.test")
    # What a client claims is not believed: it is not a trusted proxy (only "unix" is).
    forged = body(port, "alpha.test", headers={"X-Forwarded-For": "6.6.6.6",
                                               "X-Forwarded-Proto": "https"})
    assert (forged["remote_addr"], forged["scheme"]) == ("127.0.0.1", "http")


@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_the_web_server_stamps_the_request_start_and_passes_the_request_id(site, server):
    """nginx's `t=${msec}` and Apache's `%t` reach the app and read as a queue time; the
    client's X-Request-Id reaches the app and comes back through the proxy."""
    from railcar.http.requestinfo import queue_time

    port = site.nginx_port if server == "nginx" else site.apache_port
    pattern = r"t=\d{10}\.\d{3}" if server == "nginx" else r"t=\d{16}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/", headers={"Host": "alpha.test", "X-Request-Id": "trace-42"})
        response = conn.getresponse()
        seen = json.loads(response.read())
        assert response.getheader("X-Request-Id") == "trace-42"
    finally:
        conn.close()
    assert seen["request_id"] == "trace-42"
    assert re.fullmatch(pattern, seen["request_start"]), seen["request_start"]
    assert 0 <= queue_time(seen["request_start"], time.time()) < 5


def test_a_trusted_peer_sets_address_and_scheme(site):
    sock = str(site.run_dir / "alpha.sock")
    plain = json.loads(get_unix(sock, headers={"Host": "alpha.test"})[1])
    assert (plain["remote_addr"], plain["scheme"]) == ("", "http")
    proxied = json.loads(get_unix(sock, headers={
        "Host": "alpha.test", "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https"})[1])
    assert (proxied["remote_addr"], proxied["scheme"]) == ("203.0.113.9", "https")


# --- static files ------------------------------------------------------------------------

@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_static_files_come_from_the_web_server_and_follow_current(site, server):
    port = site.nginx_port if server == "nginx" else site.apache_port
    sock = str(site.run_dir / "alpha.sock")
    # The app itself answers /static/... with its JSON: what the web server sends is the file.
    assert json.loads(get_unix(sock, "/static/version.txt",
                               {"Host": "alpha.test"})[1])["app"] == "alpha"
    assert get(port, "alpha.test", "/static/version.txt") == (200, b"alpha static r1\n")
    release = make_release(site.base / "alpha", f"r2-{server}", f"alpha static {server}\n")
    give_to_app_user(release)
    point_current(site.base / "alpha", release.name)
    try:
        assert get(port, "alpha.test", "/static/version.txt") == (
            200, f"alpha static {server}\n".encode())
        assert get(port, "beta.test", "/static/version.txt") == (200, b"beta static r1\n")
        assert get(port, "alpha.test", "/static/missing.txt")[0] == 404
    finally:
        point_current(site.base / "alpha", "r1")


# --- rolling restart of one app under load --------------------------------------------------

def test_rolling_restart_of_one_app_through_nginx_under_load(site):
    alpha_before, beta_before = site.pids("alpha"), site.pids("beta")
    load = Load("127.0.0.1", site.nginx_port, clients=6, mode="keepalive", max_seconds=60,
                headers={"Host": "alpha.test"}).start()
    try:
        wait_for(lambda: len(load.outcomes) > 50, 20, what="load to start")
        result = site.railcar("restart", "alpha", "--admin-socket", site.admin_socket)
        assert result.returncode == 0, result.stdout + result.stderr
        after = len(load.outcomes)
        wait_for(lambda: len(load.outcomes) > after + 50, 20, what="load after the restart")
    finally:
        load.stop()
    failures = load.failures()
    assert not failures, f"{len(failures)} failed of {len(load.outcomes)}: {failures[:3]}"
    assert site.pids("alpha").isdisjoint(alpha_before)
    assert site.pids("beta") == beta_before
    served_by = {json.loads(o.body)["pid"] for o in load.outcomes}
    assert served_by & alpha_before and served_by & site.pids("alpha")


# --- one broken app next to a working one ------------------------------------------------

def test_app_failing_to_boot_leaves_the_other_serving(site, tmp_path):
    base = Path(tempfile.mkdtemp(prefix="railcar-broken-", dir="/tmp"))
    os.chmod(base, 0o755)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(base / "notify.sock"))
    notify.settimeout(60)
    processes = Processes()
    admin = str(base / "admin.sock")
    pids = []
    try:
        for name in ("good", "broken"):
            release = make_release(base / name, "r1", "")
            if name == "broken":
                (release / "wsgi.py").write_text("raise RuntimeError('missing SECRET_KEY')\n")
            point_current(base / name, "r1")
            give_to_app_user(base / name)
        config = base / "railcar.toml"
        write_config(config, base / "run", [
            {"name": name, "root": str(base / name / "current"),
             "python": str(site.venvs["alpha"]), "workers": 1, "env": {"APP_NAME": name},
             "boot_timeout": 30} for name in ("good", "broken")])
        master = processes.start(
            railcar_command() + ["start", "--config", str(config), "--admin-socket", admin],
            base / "railcar.out", env=dict(os.environ, NOTIFY_SOCKET=str(base / "notify.sock")))
        assert notify.recv(4096).decode().startswith("EXTEND_TIMEOUT_USEC=")
        message = notify.recv(4096).decode()
        assert "READY=1" in message and "broken" in message, message
        assert master.poll() is None
        seen = json.loads(get_unix(str(base / "run" / "good.sock"), headers={"Host": "x"})[1])
        assert seen["app"] == "good"
        result = subprocess.run(railcar_command() + ["status", "--json", "--admin-socket",
                                                     admin], capture_output=True, text=True,
                                timeout=30)
        apps = {a["name"]: a for a in json.loads(result.stdout)["apps"]}
        assert apps["good"]["state"] == "serving"
        assert apps["broken"]["state"] == "failed"
        assert "missing SECRET_KEY" in apps["broken"]["error"]
        pids = [w["pid"] for w in apps["good"]["workers"] if w["pid"]]
        result = subprocess.run(railcar_command() + ["status", "--admin-socket", admin],
                                capture_output=True, text=True, timeout=30)
        assert "missing SECRET_KEY" in result.stdout
    finally:
        processes.stop_all()
        notify.close()
        shutil.rmtree(base, ignore_errors=True)
    for pid in pids:
        assert wait_for(lambda: gone(pid), 30, what=f"worker {pid} to exit")
