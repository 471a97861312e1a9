"""TLS in standalone mode: --certfile/--keyfile on the app's TCP binds, with a test CA made
here; TLS 1.2 at least; a renewed certificate served after `railcar restart`; bad files refused
at start and on restart; a client that never handshakes holds no worker."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time

import pytest
import requests
from cryptography import x509

from accounts import accounts, needs_root, shared_dir  # noqa: F401 (fixtures)
from certs import TestCA
from conftest import free_port, railcar_command, wait_for, write_app
from railcar import config, tls
from railcar.settings import SETTINGS, ConfigError

APP = '''
def application(environ, start_response):
    body = ("%s %s" % (environ["wsgi.url_scheme"], environ["PATH_INFO"])).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
'''


@pytest.fixture
def ca(tmp_path):
    return TestCA(tmp_path / "pki")


def client_context(ca: TestCA, **versions) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.cafile))
    for name, value in versions.items():
        setattr(context, name, value)
    return context


def served_serial(port: int, ca: TestCA) -> int:
    """The serial number of the certificate the server presents now."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            client_context(ca).wrap_socket(raw, server_hostname="localhost") as tls:
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True)).serial_number


def https_get(port: int, ca: TestCA, path: str = "/") -> tuple[int, str]:
    """GET over TLS with curl, checking the chain against the test CA."""
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(ca.cafile), "-w", "\n%{http_code}",
         f"https://localhost:{port}{path}", "--resolve", f"localhost:{port}:127.0.0.1"],
        capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    body, _, code = result.stdout.rpartition("\n")
    return int(code), body


def start_tls(railcar, tmp_path, certfile, keyfile, *args, **options):
    app = write_app(tmp_path / "app", APP)
    return railcar().start(str(app), "--certfile", str(certfile), "--keyfile", str(keyfile),
                           *args, **options)


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@needs_curl
def test_curl_over_tls_with_a_test_ca(railcar, tmp_path, ca):
    certfile, keyfile, _ = ca.issue("server")
    server = start_tls(railcar, tmp_path, certfile, keyfile, "--workers", "1")
    assert https_get(server.port, ca, "/hello") == (200, "https /hello")
    # The port speaks TLS only: a plain HTTP request gets no HTTP answer.
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            reply = sock.recv(100)
        except ConnectionResetError:
            reply = b""
    assert not reply.startswith(b"HTTP/")
    # A client that does not trust the test CA refuses the certificate.
    result = subprocess.run(["curl", "-sS", "--max-time", "10",
                             f"https://127.0.0.1:{server.port}/"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode != 0


def test_server_context_defaults(ca):
    certfile, keyfile, _ = ca.issue("server")
    context = tls.server_context(str(certfile), str(keyfile))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert context.verify_mode == ssl.CERT_NONE     # no client certificates asked for


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_1_1_is_refused_and_1_2_accepted(railcar, tmp_path, ca):
    certfile, keyfile, _ = ca.issue("server")
    server = start_tls(railcar, tmp_path, certfile, keyfile, "--workers", "1")
    old = client_context(ca, minimum_version=ssl.TLSVersion.TLSv1,
                         maximum_version=ssl.TLSVersion.TLSv1_1)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer what the server must refuse
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="localhost").close()
    exactly_12 = client_context(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            exactly_12.wrap_socket(raw, server_hostname="localhost") as tls:
        assert tls.version() == "TLSv1.2"
        tls.sendall(b"GET /v HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := tls.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"https /v")
        assert tls.selected_alpn_protocol() in (None, "http/1.1")
        assert tls.compression() is None


def test_renewed_certificate_is_served_after_restart(railcar, tmp_path, ca):
    certfile, keyfile, first = ca.issue("server")
    server = start_tls(railcar, tmp_path, certfile, keyfile, "--workers", "2")
    assert served_serial(server.port, ca) == first
    # Renewal as certbot does it: new files in place of the old (a rename each).
    new_cert, new_key, second = ca.issue("renewed")
    os.replace(new_key, keyfile)
    os.replace(new_cert, certfile)
    assert served_serial(server.port, ca) == first   # running workers keep their context
    result = server.cli("restart")
    assert result.returncode == 0, result.stdout + result.stderr
    for _ in range(6):   # every worker now serves the renewed certificate
        assert served_serial(server.port, ca) == second


def test_bad_certificate_or_key_is_refused_at_start(tmp_path, ca):
    certfile, keyfile, _ = ca.issue("server")
    _, other_key, _ = ca.issue("other")
    app = write_app(tmp_path / "app", APP)
    base = railcar_command() + ["start", str(app), "--port", "1", "--admin-socket",
                                str(tmp_path / "admin.sock")]
    if os.getuid() == 0:
        base.append("--allow-root")
    missing = tmp_path / "nope.key"
    cases = [
        (["--certfile", str(certfile), "--keyfile", str(missing)], ["keyfile", str(missing)]),
        (["--certfile", str(tmp_path / "nope.crt")], ["certfile", str(tmp_path / "nope.crt")]),
        (["--certfile", str(certfile), "--keyfile", str(other_key)],
         ["keyfile", str(other_key), "does not match", str(certfile)]),
        (["--certfile", str(keyfile), "--keyfile", str(keyfile)], ["certfile", str(keyfile)]),
        (["--keyfile", str(keyfile)], ["keyfile", "certfile"]),
    ]
    for args, words in cases:
        result = subprocess.run(base + args, capture_output=True, text=True, timeout=60)
        assert result.returncode != 0, args
        for word in words:
            assert word in result.stderr, (args, result.stderr)


@needs_root()
def test_a_key_the_app_account_cannot_read_is_refused_at_start_naming_file_and_account(
        accounts, shared_dir):
    """A root master reads any key, its workers (the app's account) only theirs: the start
    check reads the files as that account too, before any worker fails on them."""
    account = accounts.user()
    certfile, keyfile, _ = TestCA(shared_dir / "pki").issue("server")   # key: root's, 0600
    app = write_app(shared_dir / "app", APP)
    args = ["--user", account.pw_name, "--certfile", str(certfile), "--keyfile", str(keyfile)]
    result = subprocess.run(railcar_command() + ["start", str(app), "--port", str(free_port()),
                                                 "--admin-socket", str(shared_dir / "a.sock"),
                                                 *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    for word in ("keyfile", str(keyfile), f"account {account.pw_name}"):
        assert word in result.stderr, result.stderr
    assert "certfile" not in result.stderr, result.stderr    # that one is world-readable

    cli = {s.name: None for s in SETTINGS} | {"user": account.pw_name,
                                               "certfile": str(certfile),
                                               "keyfile": str(keyfile)}
    os.chown(keyfile, 0, account.pw_gid)
    keyfile.chmod(0o640)                        # readable through the account's group
    [app_config] = config.load(cli, str(app)).apps
    keyfile.chmod(0o600)                        # as before a spawn batch: checked again
    with pytest.raises(ConfigError, match=f"app 'app': keyfile {keyfile}: cannot be read by "
                                          f"the app's account {account.pw_name}"):
        app_config.check_tls()
    (shared_dir / "pki").chmod(0o700)           # a directory on the way counts too
    certfile.chmod(0o644)
    with pytest.raises(ConfigError, match=f"certfile {certfile}: cannot be read"):
        app_config.check_tls()


def test_restart_onto_a_broken_certificate_is_refused(railcar, tmp_path, ca):
    certfile, keyfile, first = ca.issue("server")
    server = start_tls(railcar, tmp_path, certfile, keyfile, "--workers", "2",
                       workers_ready=2)
    pids = sorted(w["pid"] for w in server.workers())
    _, other_key, _ = ca.issue("other")
    os.replace(other_key, keyfile)   # a renewal gone wrong: the key of another certificate
    result = server.cli("restart")
    assert result.returncode != 0
    assert "keyfile" in result.stderr and str(keyfile) in result.stderr, result.stderr
    assert sorted(w["pid"] for w in server.workers()) == pids
    assert served_serial(server.port, ca) == first


def test_a_client_that_never_handshakes_holds_no_worker(railcar, tmp_path, ca):
    certfile, keyfile, _ = ca.issue("server")
    server = start_tls(railcar, tmp_path, certfile, keyfile, "--workers", "1",
                       "--header-timeout", "2")
    silent = [server.connect() for _ in range(20)]   # TCP only, never a ClientHello
    half = server.connect()
    half.sendall(b"\x16\x03\x01\x00\xff\x01")   # the start of a ClientHello, then nothing
    try:
        started = time.monotonic()
        for _ in range(5):
            with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw, \
                    client_context(ca).wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                assert tls.recv(100).startswith(b"HTTP/1.1 200 ")
        assert time.monotonic() - started < 2, "served behind the silent clients"
        # Each silent connection is closed after header_timeout (2 s), not held forever.
        for sock in silent + [half]:
            sock.settimeout(10)
            wait_for(lambda: _closed(sock), 10, what="the server to close a silent client")
        assert time.monotonic() - started < 8
    finally:
        for sock in silent + [half]:
            sock.close()


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


@needs_curl
@pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason="needs nginx (apt-get install nginx)")
def test_nginx_site_on_tls_in_front_sets_the_queue_time(railcar, tmp_path, ca):
    """The rendered nginx site with ssl_certificate: `nginx -t` accepts it, curl reaches the
    app over TLS through it, and the app's queue time (X-Request-Start, set by the site)
    reaches the JSON access log and the metrics."""
    from test_deploy_nginx import Nginx

    certfile, keyfile, _ = ca.issue("site")
    app = write_app(tmp_path / "app", APP)
    sock, access, metrics = tmp_path / "app.sock", tmp_path / "access.log", free_port()
    options = ["--bind", f"unix:{sock}", "--access-log", str(access),
               "--access-log-format", "json", "--workers", "1"]
    server = railcar().start(str(app), *options, "--metrics-bind", f"127.0.0.1:{metrics}")
    nginx = Nginx(tmp_path / "nginx", free_port())
    tls_port = free_port()
    rendered = subprocess.run(
        railcar_command() + ["config", "nginx", str(app), *options,
                             "--listen", f"127.0.0.1:{nginx.port}",
                             "--ssl-certificate", str(certfile),
                             "--ssl-certificate-key", str(keyfile),
                             "--ssl-listen", f"127.0.0.1:{tls_port}",
                             "-o", str(nginx.sites / "app.conf")],
        capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    site = (nginx.sites / "app.conf").read_text()
    assert f"listen 127.0.0.1:{tls_port} ssl;" in site and "TLSv1.2 TLSv1.3" in site
    check = subprocess.run(nginx.command("-t"), capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    nginx.start()
    try:
        assert https_get(tls_port, ca, "/through") == (200, "https /through")
        record = json.loads(wait_for(lambda: access.exists() and access.read_text(), 10,
                                     what="the access log").splitlines()[-1])
        assert record["path"] == "/through" and record["remote_addr"] == "127.0.0.1"
        assert record["queue_time"] is not None and 0 <= record["queue_time"] < 5, record

        def queued() -> bool:
            text = requests.get(f"http://127.0.0.1:{metrics}/metrics", timeout=10).text
            return 'railcar_request_queue_seconds_count{app="app"} 1.0' in text

        wait_for(queued, 10, what="the queue time in the metrics")
    finally:
        nginx.stop()
        server.stop()


def test_nginx_tls_keys_in_fabric_yaml_are_validated():
    from railcar.deploy.settings import ConfigError, validate

    def where(key):
        return "fabric.yaml"

    base = {"app": "a", "source": "/"}
    config = validate(dict(base, nginx={"ssl_certificate": "/etc/ssl/a.pem",
                                        "ssl_certificate_key": "/etc/ssl/a.key"}), where, None)
    assert config.nginx["ssl_listen"] == "443"
    assert config.nginx["ssl_certificate_key"] == "/etc/ssl/a.key"
    for bad, message in (({"ssl_certificate": "/etc/ssl/a.pem"},
                          "railcar.nginx.ssl_certificate_key: needed too"),
                         ({"ssl_certificate": "a.pem", "ssl_certificate_key": "/k"},
                          "railcar.nginx.ssl_certificate: expected an absolute path"),
                         ({"ssl_certificate": "/a b.pem", "ssl_certificate_key": "/k"},
                          "railcar.nginx.ssl_certificate: '/a b.pem' has characters"),
                         ({"ssl_listen": "443; x"}, "railcar.nginx.ssl_listen:")):
        with pytest.raises(ConfigError, match="^fabric.yaml: " + message.replace(".", r"\.")):
            validate(dict(base, nginx=bad), where, None)


def test_rolling_restart_over_tls_under_load_drops_nothing(railcar, tmp_path, ca):
    """Clients connecting (new TLS handshakes) and reusing connections throughout a rolling
    restart: none fails, including those whose handshake a retiring worker had begun."""
    from loadgen import Load

    certfile, keyfile, _ = ca.issue("server")
    server = start_tls(railcar, tmp_path, certfile, keyfile, "--workers", "2",
                       workers_ready=2)
    context = client_context(ca)
    loads = [Load("127.0.0.1", server.port, clients=3, mode=mode, max_seconds=60,
                  ssl_context=context).start() for mode in ("close", "keepalive")]
    try:
        time.sleep(1)
        for _ in range(2):
            result = server.cli("restart")
            assert result.returncode == 0, result.stdout + result.stderr
    finally:
        for load in loads:
            load.stop()
    for load in loads:
        assert len(load.outcomes) > 20, load.mode
        assert not load.failures(), [f.error or f.status for f in load.failures()][:5]
        assert all(o.body.startswith(b"https ") for o in load.outcomes)
