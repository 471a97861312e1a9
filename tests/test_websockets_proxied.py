"""The flask-sock example behind real nginx and Apache, with the site and vhost that
`railcar config` renders: WebSocket upgrades pass through both, server-sent events arrive
event by event, and a rolling restart's close frame 1001 reaches the clients."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import REPO, railcar_command, wait_for
from test_web_servers import APACHE, NGINX, Site, _daemon, _stop_daemon

pytestmark = pytest.mark.skipif(not (os.access(NGINX, os.X_OK) and os.access(APACHE, os.X_OK)),
                                reason="needs nginx and apache2 (apt-get install nginx apache2)")


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: ws.test\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200 ")
    except OSError:
        return False


@pytest.fixture(scope="module")
def proxied():
    base = Path(tempfile.mkdtemp(prefix="railcar-ws-", dir="/tmp"))
    os.chmod(base, 0o755)  # nginx's and Apache's workers must reach into it
    site = Site(base)
    app = shutil.copytree(REPO / "examples" / "wsecho", base / "wsecho")
    site.config.write_text(f"""[server]
run_dir = "{site.run_dir}"
log_file = "{site.log}"
graceful_timeout = 5

[[apps]]
name = "wsecho"
root = "{app}"
python = "{os.sys.executable}"
workers = 2
allow_root = {"true" if os.getuid() == 0 else "false"}
long_lived_timeout = 2
""")
    try:
        _daemon(railcar_command() + ["start", "--daemon", "--config", str(site.config),
                                     "--admin-socket", site.admin_socket,
                                     "--pid-file", str(site.pid_file)], base / "railcar.out")
        wait_for(lambda: site.serving({"wsecho": 2}), 60, what=f"railcar ({site.log})")
        nginx_conf, apache_conf = site.write_nginx_conf(), site.write_apache_conf()
        for check in ([NGINX, "-t", "-c", str(nginx_conf), "-p", f"{base}/"],
                      [APACHE, "-t", "-f", str(apache_conf)]):
            result = subprocess.run(check, capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, result.stderr
        _daemon([NGINX, "-c", str(nginx_conf), "-p", f"{base}/"], base / "nginx.out")
        _daemon([APACHE, "-f", str(apache_conf)], base / "apache.out")
        for port in (site.nginx_port, site.apache_port):
            wait_for(lambda: _answers(port), 30, what=f"web server on port {port}")
        yield site
    finally:
        _stop_daemon(base / "apache.pid")
        _stop_daemon(base / "nginx.pid")
        _stop_daemon(site.pid_file)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_websocket_echo_through_the_web_server(proxied, server):
    port = proxied.nginx_port if server == "nginx" else proxied.apache_port
    with connect(f"ws://127.0.0.1:{port}/echo", open_timeout=10, close_timeout=5) as ws:
        for message in ("hello", b"\x00bytes\xff", "y" * 100_000):
            ws.send(message)
            assert ws.recv(timeout=10) == message
        workers = [w for a in proxied.status()["apps"] for w in a["workers"]]
        assert sum(w["long_lived"] for w in workers) == 1
    # Plain requests still reach the app over the kept-alive upstream connections.
    assert _answers(port)


@pytest.mark.parametrize("server", ["nginx", "apache"])
def test_event_stream_arrives_event_by_event(proxied, server):
    """Events 0.3 s apart each reach the client on their own, not in a buffer's worth."""
    port = proxied.nginx_port if server == "nginx" else proxied.apache_port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /events?every=0.3 HTTP/1.1\r\nHost: ws.test\r\n\r\n")
        started = time.monotonic()
        data, arrivals = b"", {}
        while len(arrivals) < 3 and time.monotonic() - started < 10:
            data += sock.recv(4096)
            for number in range(3):
                if f"tick {number}".encode() in data:
                    arrivals.setdefault(number, time.monotonic() - started)
        assert data.startswith(b"HTTP/1.1 200 "), data
        assert sorted(arrivals) == [0, 1, 2], data
        # tick 0 comes 0.3 s in, tick 1 at 0.6 s: the first did not wait for the second.
        assert arrivals[0] < arrivals[1] - 0.15, arrivals


def test_restart_closes_proxied_websockets_with_going_away(proxied):
    """The close frame 1001 of a retiring worker reaches the client through both proxies."""
    with contextlib.ExitStack() as stack:
        sockets = {server: stack.enter_context(connect(f"ws://127.0.0.1:{port}/echo",
                                                       open_timeout=10, close_timeout=5))
                   for server, port in (("nginx", proxied.nginx_port),
                                        ("apache", proxied.apache_port))}
        for ws in sockets.values():
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
        result = proxied.railcar("restart", "--admin-socket", proxied.admin_socket,
                                 timeout=60)
        assert result.returncode == 0, result.stderr
        for server, ws in sockets.items():
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001, server
    assert _answers(proxied.nginx_port) and _answers(proxied.apache_port)
