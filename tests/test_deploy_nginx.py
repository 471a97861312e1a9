"""`fab setup` / `fab deploy` with railcar.nginx enabled, over real OpenSSH to a loopback host,
in front of a real nginx on loopback that includes the test's sites dir.

The site is rendered on the host by the server venv's `railcar config nginx`, installed only
when it changed, checked with `nginx -t` (a failure keeps the old site), and nginx reloaded.
nginx is started by the test with its own prefix and stopped by its pid; traffic goes to
127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import free_port, gone, wait_for
from test_deploy import Site, deploy_wheelhouse  # noqa: F401  (a fixture)

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.skipif(not os.access(NGINX, os.X_OK),
                                reason="needs nginx (apt-get install nginx)")


class Nginx:
    """A test nginx: its own prefix, a default server on `port` answering 418 to any Host,
    and `include SITES/*.conf` where setup installs the app's site."""

    def __init__(self, prefix: Path, port: int):
        self.prefix, self.port = prefix, port
        self.sites = prefix / "sites"
        self.conf = prefix / "nginx.conf"
        self.pid_file = prefix / "nginx.pid"
        (prefix / "tmp").mkdir(parents=True)
        self.sites.mkdir()
        temp = "\n".join(f"    {kind}_temp_path {prefix}/tmp/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        user = "user root;" if os.getuid() == 0 else ""
        self.conf.write_text(f"""{user}
worker_processes 1;
pid {self.pid_file};
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
{temp}
    server {{
        listen 127.0.0.1:{port} default_server;
        server_name _;
        return 418;
    }}
    include {self.sites}/*.conf;
}}
""")

    def command(self, *args: str) -> list[str]:
        return [NGINX, "-p", f"{self.prefix}/", "-c", str(self.conf), *args]

    def start(self) -> None:
        subprocess.run(self.command(), check=True, timeout=30, capture_output=True)
        wait_for(lambda: self.pid_file.exists(), 10, what="nginx pid file")

    def stop(self) -> None:
        try:
            pid = int(self.pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        try:
            os.kill(pid, signal.SIGQUIT)
        except ProcessLookupError:
            return
        wait_for(lambda: gone(pid), 30, what=f"nginx {pid} to exit")

    def get(self, host: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", "/", headers={"Host": host})
            response = conn.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            conn.close()


def write_config(site: Site, nginx: Nginx, server_names: list[str]) -> None:
    site.write_config()
    config = site.project / "fabric.yaml"
    config.write_text(config.read_text() + f"""\
  nginx:
    enabled: true
    sites_dir: {nginx.sites}
    listen: 127.0.0.1:{nginx.port}
    server_names: [{", ".join(server_names)}]
    test_command: {shlex.join(nginx.command("-t", "-q"))!r}
    reload_command: {nginx.command("-s", "reload")!r}
""")


@pytest.fixture(scope="module")
def web(tmp_path_factory, deploy_wheelhouse):  # noqa: F811
    site = Site(tmp_path_factory.mktemp("deploy-nginx"), deploy_wheelhouse)
    site.create("")
    nginx = Nginx(site.workdir / "nginx", free_port())
    try:
        site.add_host("host1")
        write_config(site, nginx, ["site.test"])
        nginx.start()
        yield site, nginx
    finally:
        nginx.stop()
        site.close()


def serves(nginx: Nginx, host: str, text: str) -> bool:
    try:
        return nginx.get(host) == (200, text)
    except OSError:
        return False


def test_setup_and_deploy_install_the_nginx_site(web):
    site, nginx = web
    started = time.monotonic()
    output = site.fab("-H", "host1", "setup")
    installed = nginx.sites / "railcar-site.conf"
    # before the first release the site leads to the placeholder, which answers 503
    assert f"installed {installed}, nginx reloaded" in output
    wait_for(lambda: nginx.get("site.test")[0] == 503, 15, what="the placeholder via nginx")

    site.commit("1")
    output = site.fab("-H", "host1", "deploy")
    assert f"unchanged {installed}" in output
    text = installed.read_text()
    # rendered on the host from the server's command line: the host's socket, our names
    assert f"server unix:{site.root()}/run/app.sock" in text
    assert "server_name site.test;" in text and f"listen 127.0.0.1:{nginx.port};" in text
    wait_for(lambda: serves(nginx, "site.test", "version 1"), 15, what="the app through nginx")
    assert nginx.get("other.test")[0] == 418        # routed by Host

    output = site.fab("-H", "host1", "setup")
    assert f"unchanged {installed}" in output and "reloaded" not in output

    # a config nginx refuses: setup fails with nginx's message, the old site stays
    broken = nginx.sites / "zz-broken.conf"
    broken.write_text("no_such_directive on;\n")
    write_config(site, nginx, ["site.test", "www.site.test"])
    output = site.fab("-H", "host1", "setup", ok=False)
    assert 'unknown directive "no_such_directive"' in output
    assert "previous site is left in place" in output
    assert installed.read_text() == text
    assert sorted(p.name for p in nginx.sites.iterdir()) == ["railcar-site.conf", "zz-broken.conf"]
    broken.unlink()

    output = site.fab("-H", "host1", "setup")
    assert f"installed {installed}, nginx reloaded" in output
    wait_for(lambda: serves(nginx, "www.site.test", "version 1"), 15, what="the new name")
    assert "unchanged" in site.fab("-H", "host1", "setup").split("nginx    ok")[1]
    # five setups (accounts, layout, venv, env file, service, site) and a deploy, on a machine
    # shared with other test runs
    assert time.monotonic() - started < 150


def test_nginx_settings_are_validated():
    from railcar.deploy.settings import ConfigError, validate

    def where(key):
        return "fabric.yaml"

    config = validate({"app": "a", "source": "/"}, where, None)
    assert config.nginx["enabled"] is False
    assert config.nginx["reload_command"] == "systemctl reload nginx"
    config = validate({"app": "a", "source": "/", "nginx": {
        "enabled": True, "reload_command": ["nginx", "-s", "reload"]}}, where, None)
    assert config.nginx["reload_command"] == "nginx -s reload"
    for bad, message in (({"enabled": "yes"}, "railcar.nginx.enabled: expected true or false"),
                         ({"listen": "80; x"}, "railcar.nginx.listen:"),
                         ({"sites_dir": "conf.d"}, "railcar.nginx.sites_dir: expected an absolute"),
                         ({"bogus": 1}, "railcar.nginx: unknown key 'bogus'")):
        with pytest.raises(ConfigError, match="^fabric.yaml: " + message.replace(".", r"\.")):
            validate({"app": "a", "source": "/", "nginx": bad}, where, None)
