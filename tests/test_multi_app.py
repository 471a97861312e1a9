"""Multi-app configs (--config FILE), trusted proxies and `railcar config` rendering, without
starting servers (tests/test_web_servers.py runs them behind real nginx and Apache)."""

from __future__ import annotations

import os
import pwd

import pytest

from railcar import config
from railcar.http.proxies import TrustedProxies, apply_forwarded
from railcar.render import RenderError, render
from railcar.settings import SETTINGS, ConfigError

IS_ROOT = os.getuid() == 0


def cli(**values):
    return {s.name: None for s in SETTINGS} | values


@pytest.fixture
def apps_dir(tmp_path):
    for name in ("alpha", "beta"):
        (tmp_path / name).mkdir()
        if IS_ROOT:
            nobody = pwd.getpwnam("nobody")
            os.chown(tmp_path / name, nobody.pw_uid, nobody.pw_gid)
    return tmp_path


def load(path, text):
    path.write_text(text)
    return config.load(cli(config=str(path)), None)


APPS = '''
[server]
run_dir = "run"
log_file = "/var/log/railcar/railcar.log"
pid_file = "/run/railcar/railcar.pid"

[[apps]]
name = "alpha"
root = "alpha"
server_names = ["alpha.example.com", "www.alpha.example.com"]
static_dir = "public/"
max_body_size = 1048576
access_log = "/var/log/railcar/alpha.log"

[[apps]]
name = "beta"
root = "beta"
server_names = "beta.example.com"
trusted_proxies = ["10.0.0.0/8", "unix"]
'''


def test_apps_without_bind_get_a_unix_socket_in_the_run_dir(apps_dir):
    server = load(apps_dir / "railcar.toml", APPS)
    alpha, beta = server.apps
    assert server.run_dir == str(apps_dir / "run")
    assert alpha.binds == [f"unix:{apps_dir}/run/alpha.sock"]
    assert beta.binds == [f"unix:{apps_dir}/run/beta.sock"]
    assert alpha.server_names == ["alpha.example.com", "www.alpha.example.com"]
    assert beta.server_names == ["beta.example.com"]
    assert alpha.static_dir == "public"
    assert alpha.limits["trusted_proxies"] == ["127.0.0.0/8", "::1/128", "unix"]
    assert beta.limits["trusted_proxies"] == ["10.0.0.0/8", "unix"]
    assert server.config_file == str(apps_dir / "railcar.toml")
    if IS_ROOT:
        assert alpha.run_as.user == "nobody" and alpha.run_as.uid != 0


@pytest.mark.parametrize("table, message", [
    ('user = "no-such-user-here"', "(beta): user: no such user 'no-such-user-here'"),
    ('group = "no-such-group-here"', "(beta): group: no such group"),
    ('socket_group = "no-such-group-here"', "(beta): socket_group: no such group"),
    ('trusted_proxies = ["10.0.0.300"]', "(beta): trusted_proxies: '10.0.0.300' is not"),
    ('static_dir = "../etc"', "(beta): static_dir:"),
    ('server_names = ["alpha.example.com"]', "server_names: 'alpha.example.com' is used by app "
                                             "'alpha' and app 'beta'"),
    ('server_names = ["bad name"]', "(beta): server_names:"),
])
def test_bad_app_settings_name_the_file_app_and_key(apps_dir, table, message):
    if "user" in table or "group" in table:
        if not IS_ROOT:
            pytest.skip("accounts are checked only when the master runs as root")
    path = apps_dir / "railcar.toml"
    text = APPS.replace('name = "beta"\n', f'name = "beta"\n{table}\n', 1)
    for own in ('server_names = "beta.example.com"', 'trusted_proxies = ["10.0.0.0/8", "unix"]'):
        if table.split()[0] == own.split()[0]:      # the one given above replaces beta's own
            text = text.replace(own + "\n", "")
    with pytest.raises(ConfigError) as error:
        load(path, text)
    assert message in str(error.value)
    assert str(path) in str(error.value)


@pytest.mark.skipif(not IS_ROOT, reason="user switching applies when the master runs as root")
def test_workers_never_run_as_root(apps_dir):
    os.chown(apps_dir / "beta", 0, 0)
    path = apps_dir / "railcar.toml"
    with pytest.raises(ConfigError, match=r"\(beta\): user: .* owned by root"):
        load(path, APPS)
    with pytest.raises(ConfigError, match=r"\(beta\): user: workers never run as root"):
        load(path, APPS.replace('name = "beta"\n', 'name = "beta"\nuser = "root"\n'))


def test_trusted_proxies_match_addresses_networks_and_unix():
    trusted = TrustedProxies(["127.0.0.0/8", "::1/128", "unix", "10.1.0.0/16"])
    assert trusted.trusts("") and trusted.trusts("127.0.0.5") and trusted.trusts("::1")
    assert trusted.trusts("10.1.2.3") and trusted.trusts("::ffff:10.1.2.3")
    assert not trusted.trusts("10.2.0.1") and not trusted.trusts("8.8.8.8")
    assert not TrustedProxies([]).trusts("") and not TrustedProxies(["10.0.0.1"]).trusts("")


@pytest.mark.parametrize("forwarded_for, proto, addr, scheme", [
    ("203.0.113.9", "https", "203.0.113.9", "https"),
    ("6.6.6.6, 203.0.113.9", "http", "203.0.113.9", "http"),        # spoofed left part
    ("203.0.113.9, 10.1.0.7", None, "203.0.113.9", "http"),         # through a trusted hop
    ("10.1.0.7, 10.1.0.8", None, "10.1.0.7", "http"),               # all trusted: leftmost
    ("garbage", "gopher", "", "http"),                              # nothing usable
    ("203.0.113.9, nonsense", "HTTPS", "", "https"),                # a bad entry ends the walk
])
def test_forwarded_headers_of_a_trusted_peer(forwarded_for, proto, addr, scheme):
    environ = {"REMOTE_ADDR": "", "wsgi.url_scheme": "http", "SERVER_PORT": "80",
               "HTTP_HOST": "example.com", "HTTP_X_FORWARDED_FOR": forwarded_for}
    if proto:
        environ["HTTP_X_FORWARDED_PROTO"] = proto
    apply_forwarded(environ, TrustedProxies(["unix", "10.1.0.0/16"]))
    assert (environ["REMOTE_ADDR"], environ["wsgi.url_scheme"]) == (addr, scheme)
    assert environ["SERVER_PORT"] == ("443" if scheme == "https" else "80")


def test_render_every_kind(apps_dir):
    server = load(apps_dir / "railcar.toml", APPS)
    nginx = render("nginx", server, listen="127.0.0.1:8080")
    assert "listen 127.0.0.1:8080;" in nginx
    assert "server_name alpha.example.com www.alpha.example.com;" in nginx
    assert f"server unix:{apps_dir}/run/alpha.sock" in nginx and "keepalive 32;" in nginx
    assert f"alias {apps_dir}/alpha/public/;" in nginx
    assert "client_max_body_size 1048576;" in nginx and "client_max_body_size 0;" in nginx
    assert "X-Forwarded-Proto $scheme" in nginx
    apache = render("apache", server)
    assert f'ProxyPass / "unix:{apps_dir}/run/beta.sock|http://railcar-beta/"' in apache
    assert "ServerAlias www.alpha.example.com" in apache
    unit = render("systemd", server, railcar="/opt/railcar/bin/railcar")
    assert f"ExecStart=/opt/railcar/bin/railcar start --config {apps_dir}/railcar.toml" in unit
    assert "Type=notify" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    rotate = render("logrotate", server)
    assert "/var/log/railcar/railcar.log /var/log/railcar/alpha.log {" in rotate
    assert 'kill -USR1 "$(cat /run/railcar/railcar.pid)"' in rotate


def test_render_refuses_what_it_cannot_express(apps_dir):
    (apps_dir / "with space").mkdir()
    if IS_ROOT:
        os.chown(apps_dir / "with space", pwd.getpwnam("nobody").pw_uid, -1)
    server = load(apps_dir / "railcar.toml",
                  APPS.replace('root = "beta"', 'root = "with space"\nstatic_dir = "s"'))
    with pytest.raises(RenderError, match="app 'beta': static path"):
        render("nginx", server)
    with pytest.raises(RenderError, match="unknown kind"):
        render("lighttpd", server)
