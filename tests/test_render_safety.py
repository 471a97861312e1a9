"""Rendered configuration cannot be injected into: `railcar config nginx/apache/systemd/
logrotate` (the real CLI) refuses names and values that would break out of their line or word,
naming the key and the file, and quotes what each format can carry (spaces, %, $, quotes in a
systemd command line; a pid file path in logrotate's shell script). What it renders passes
`nginx -t`, `apache2 -t` and `systemd-analyze verify`."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import railcar_command, write_app
from railcar.render import render_systemd_unit

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
APACHE = shutil.which("apache2") or "/usr/sbin/apache2"
APACHE_MODULES = Path("/usr/lib/apache2/modules")
ANALYZE = shutil.which("systemd-analyze")

HELLO = '''
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]
'''


def toml_value(value) -> str:
    return json.dumps(value)  # a TOML basic string or array (\\n, \\u escapes included)


def write_config(path: Path, apps: list[dict], server: dict | None = None) -> Path:
    lines = ["[server]"] + [f"{k} = {toml_value(v)}" for k, v in (server or {}).items()]
    for app in apps:
        lines.append("[[apps]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in ({"user": "nobody"} | app).items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def config_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(railcar_command() + ["config", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def base(tmp_path) -> Path:
    for name in ("app", "other"):
        write_app(tmp_path / name, HELLO)
    (tmp_path / "run").mkdir()
    return tmp_path


BAD_VALUES = [
    ("name", "shop\nlocation / { return 200; }"),
    ("name", "shop\r\nExecStartPre=/bin/touch /tmp/owned"),
    ("name", "shop;"),
    ("name", "shop name"),
    ("name", 'shop"'),
    ("name", "shop{}"),
    ("name", "../shop"),
    ("name", "shop$x"),
    ("name", "shop%n"),
    ("name", "-shop"),
    ("name", "shop\x00"),
    ("name", "x" * 65),
    ("server_names", ["shop.example.com\nserver_name evil.example.com"]),
    ("server_names", ["shop.example.com;"]),
    ("server_names", ["a\x0bb.example.com"]),
    ("server_names", ["$host"]),
    ("server_names", ["a.example.com#"]),
    ("static_url", "/static/\nlocation /x"),
    ("static_dir", "public\nalias /etc"),
    ("bind", ["unix:/tmp/x.sock\nserver 10.0.0.1:80"]),
    ("access_log", "/tmp/a.log\n/etc/passwd"),
]


@pytest.mark.parametrize("key, value, kind", [
    (key, value, ("nginx", "apache", "systemd")[index % 3])
    for index, (key, value) in enumerate(BAD_VALUES)],
    ids=[f"{key}-{index}" for index, (key, _) in enumerate(BAD_VALUES)])
def test_bad_value_is_refused_naming_key_and_file(base, kind, key, value):
    config = write_config(base / "railcar.toml", [{"name": "shop", "root": "app", key: value}],
                          {"run_dir": str(base / "run")})
    result = config_cli(kind, "--config", str(config))
    assert result.returncode != 0 and result.stdout == ""
    assert str(config) in result.stderr and f"{key}:" in result.stderr, result.stderr
    assert "\n" not in result.stderr.strip()  # the message itself stays on one line


@pytest.mark.parametrize("key, value", [("log_file", "/tmp/rc.log\npostrotate"),
                                        ("pid_file", "/tmp/rc.pid\nendscript"),
                                        ("run_dir", "/run/rail\ncar")])
def test_bad_server_value_is_refused_naming_key_and_file(base, key, value):
    config = write_config(base / "railcar.toml", [{"name": "shop", "root": "app"}],
                          {"log_file": str(base / "railcar.log")} | {key: value})
    for kind in ("nginx", "systemd", "logrotate"):
        result = config_cli(kind, "--config", str(config))
        assert result.returncode != 0 and result.stdout == ""
        assert str(config) in result.stderr and f"{key}:" in result.stderr, result.stderr


def test_bad_name_on_the_command_line_names_the_option(base):
    result = config_cli("nginx", str(base / "app"), "--name", "shop\nlocation / {}")
    assert result.returncode != 0 and "--name" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("option, value", [("--listen", "80;\nlocation / {}"),
                                           ("--listen", '80 "x"'),
                                           ("--service", "railcar\nrm -rf /"),
                                           ("--service", "rail car"),
                                           ("--railcar", "relative/railcar"),
                                           ("--railcar", '/opt/rail"car/railcar')])
def test_bad_render_option_is_refused(base, option, value):
    config = write_config(base / "railcar.toml", [{"name": "shop", "root": "app"}],
                          {"log_file": str(base / "railcar.log")})
    kind = {"--listen": "nginx", "--service": "logrotate", "--railcar": "systemd"}[option]
    result = config_cli(kind, "--config", str(config), option, value)
    assert result.returncode != 0 and option in result.stderr and result.stdout == ""
    assert str(config) in result.stderr


def test_start_refuses_a_bad_name_before_listening(base, railcar):
    config = write_config(base / "railcar.toml",
                          [{"name": "shop\nx", "root": "app", "bind": ["127.0.0.1:1"]}])
    server = railcar()
    result = subprocess.run(railcar_command() + ["start", "--config", str(config),
                                                 "--admin-socket", server.admin_socket],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and str(config) in result.stderr
    assert "name:" in result.stderr and not os.path.exists(server.admin_socket)


def test_default_name_from_an_odd_directory_is_a_clean_name(tmp_path, railcar):
    root = write_app(tmp_path / "my shop; {v2}", HELLO)
    server = railcar().start(str(root))
    [app] = server.status()["apps"]
    assert app["name"] == "my-shop-v2-"
    assert server.get("/").text == "hello"
    server.stop()


# --- what is rendered passes the tools' own checks ---------------------------------------

def odd_but_valid_config(base: Path) -> Path:
    """Names with dots and dashes (two of them map to the same nginx identifier), a config
    file whose path has spaces, quotes, % and $ in it."""
    odd = base / "odd dir %n $HOME"
    odd.mkdir()
    return write_config(odd / 'rail "car".toml', [
        {"name": "shop.v2", "root": str(base / "app"), "server_names": ["shop.example.com"],
         "bind": [f"unix:{base}/run/shop.sock"]},
        {"name": "shop-v2", "root": str(base / "other"), "server_names": ["other.example.com"],
         "bind": [f"unix:{base}/run/other.sock"]},
    ], {"run_dir": str(base / "run"), "log_file": str(base / "railcar.log"),
        "pid_file": str(odd / "rail car.pid")})


def test_rendered_files_pass_nginx_and_apache_checks(base):
    config = odd_but_valid_config(base)
    site = base / "site.conf"
    result = config_cli("nginx", "--config", str(config), "--listen", "127.0.0.1:8080",
                        "-o", str(site))
    assert result.returncode == 0, result.stderr
    text = site.read_text()
    assert "upstream railcar_shop_v2 {" in text and "upstream railcar_shop_v2_2 {" in text
    temp = "\n".join(f"    {kind}_temp_path {base}/tmp-{kind};"
                     for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = base / "nginx.conf"
    conf.write_text(f"pid {base}/nginx.pid;\nerror_log {base}/nginx-error.log;\n"
                    f"events {{ worker_connections 16; }}\n"
                    f"http {{\n    access_log off;\n{temp}\n    include {site};\n}}\n")
    check = subprocess.run([NGINX, "-t", "-c", str(conf), "-p", f"{base}/"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    vhost = base / "vhost.conf"
    result = config_cli("apache", "--config", str(config), "--listen", "127.0.0.1:8081",
                        "-o", str(vhost))
    assert result.returncode == 0, result.stderr
    assert "http://railcar-shop.v2/" in vhost.read_text()
    modules = "\n".join(f"LoadModule {name}_module {APACHE_MODULES}/mod_{name}.so"
                        for name in ("mpm_event", "authz_core", "alias", "headers", "proxy",
                                     "proxy_http"))
    apache_conf = base / "apache.conf"
    apache_conf.write_text(f"ServerRoot /etc/apache2\nServerName localhost\n{modules}\n"
                           f"PidFile {base}/apache.pid\nErrorLog {base}/apache-error.log\n"
                           f"Mutex file:{base}\nDefaultRuntimeDir {base}\n"
                           f"Listen 127.0.0.1:8081\nInclude {vhost}\n")
    check = subprocess.run([APACHE, "-t", "-f", str(apache_conf)], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0, check.stderr


def verify_unit(unit: Path) -> list[str]:
    """systemd-analyze verify's complaints about `unit` (e.g. a program that is not there,
    which is how a misquoted ExecStart shows)."""
    result = subprocess.run([ANALYZE, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines()
            if unit.name in line or "not executable" in line or "xecStart" in line]


@pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_command_line_is_quoted_word_by_word(base):
    config = odd_but_valid_config(base)
    program = config.parent / "bin dir" / "rail car"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    unit = base / "railcar-odd.service"
    result = config_cli("systemd", "--config", str(config), "--railcar", str(program),
                        "-o", str(unit))
    assert result.returncode == 0, result.stderr
    [line] = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    program_dir = str(config.parent).replace("%", "%%")
    argument_dir = program_dir.replace("$", "$$")
    assert line == (f'ExecStart="{program_dir}/bin dir/rail car" start --config '
                    f'"{argument_dir}/rail \\"car\\".toml"')
    assert "Description=railcar application server (shop.v2, shop-v2)" in unit.read_text()
    assert not verify_unit(unit), verify_unit(unit)
    # The same quoting for a unit rendered from a shell command line (as `fab setup` does).
    text = render_systemd_unit(shlex.join([str(program), "start", "--config", str(config)]),
                               ["shop"], 60, 30, "shop on this host", "a test")
    fab_unit = base / "railcar-fab.service"
    fab_unit.write_text(text)
    assert line in text.splitlines() and not verify_unit(fab_unit)


def test_logrotate_script_quotes_the_pid_file(base):
    """The postrotate line, run by a real shell, signals the pid in a file whose path has a
    space, a quote and a $ in it."""
    config = odd_but_valid_config(base)
    text = config_cli("logrotate", "--config", str(config))
    assert text.returncode == 0, text.stderr
    [command] = [line.strip() for line in text.stdout.splitlines() if "kill -USR1" in line]
    pid_file = config.parent / "rail car.pid"
    child = subprocess.Popen(["sleep", "30"])
    try:
        pid_file.write_text(str(child.pid))
        subprocess.run(["sh", "-c", command], check=True, timeout=10)
        assert child.wait(timeout=10) == -signal.SIGUSR1
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.parametrize("settings, key", [
    ({"app": "shop\n"}, "railcar.app"),
    ({"app": "shop", "nginx": {"server_names": ["shop.example.com\n"]}},
     "railcar.nginx.server_names"),
    ({"app": "shop", "nginx": {"listen": "80\n"}}, "railcar.nginx.listen"),
])
def test_fabric_yaml_values_with_a_trailing_newline_are_refused(settings, key):
    """`$` in a regex matches before a final newline: every check is a full match."""
    from railcar.deploy.settings import ConfigError, validate
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate({"source": "/"} | settings, lambda _: "fabric.yaml", None)


def test_render_refuses_a_value_that_bypassed_the_settings(base):
    """Code may build a ServerConfig itself: render() checks again (trailing newline, a name
    that is no name), and the template guard refuses any control character."""
    from railcar import config as config_module
    from railcar.render import RenderError, render
    from railcar.settings import SETTINGS
    path = write_config(base / "railcar.toml", [{"name": "shop", "root": "app"}],
                        {"run_dir": str(base / "run")})
    values = {s.name: None for s in SETTINGS} | {"config": str(path)}
    for change, message in ((lambda app: app.binds.__setitem__(0, "unix:/tmp/x.sock\n"),
                             "socket path"),
                            (lambda app: setattr(app, "name", "shop\nlisten 81;"), "name"),
                            (lambda app: app.server_names.append("a.example.com\n"),
                             "server name")):
        server = config_module.load(values, None)
        change(server.apps[0])
        for kind in ("nginx", "apache"):
            with pytest.raises(RenderError, match=message):
                render(kind, server)
    server = config_module.load(values, None)
    server.config_file = str(path) + "\nExecStartPre=/bin/true"
    with pytest.raises(RenderError, match="control character"):
        render("nginx", server)


@pytest.mark.parametrize("account", [{"user": "shop\nExecStartPre=/bin/true"},
                                     {"user": "shop", "group": "www data"},
                                     {"user": "-shop"}])
def test_unit_account_names_are_checked(account):
    from railcar.render import RenderError
    with pytest.raises(RenderError, match="user|group"):
        render_systemd_unit(["/usr/bin/railcar", "start"], ["shop"], 60, 30, "shop", "a test",
                            **account)
    text = render_systemd_unit(["/usr/bin/railcar", "start"], ["shop"], 60, 30, "shop",
                               "a test", user="shop", group="www-data")
    assert "User=shop\n" in text and "Group=www-data\n" in text


def test_an_output_that_cannot_be_written_is_named(base):
    """`-o` into a missing directory: an error naming the path, not a traceback."""
    config = odd_but_valid_config(base)
    target = base / "missing" / "site.conf"
    result = config_cli("nginx", "--config", str(config), "-o", str(target))
    assert result.returncode == 1
    assert f"cannot write {target}: No such file or directory" in result.stderr
    assert "Traceback" not in result.stderr and not target.parent.exists()
