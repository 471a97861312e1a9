"""Render the web server's and the host's configuration for a server's apps from templates.

`render(kind, server_config, **options) -> str` is the one entry point, used by
`railcar config KIND --config FILE` and by anything that installs the result on a host.
Templates (Jinja2) live in railcar/templates/ (the repo's templates/ points there), shipped
with the package. Kinds:

- "nginx":     one upstream (keep-alive) and one server block per app, routed by server_names,
               static files served by nginx from ROOT/STATIC_DIR (ROOT being the `current`
               symlink, so a swap takes effect at once)
- "apache":    one VirtualHost per app, mod_proxy_http to the app's unix socket
- "systemd":   a Type=notify unit running `railcar start --config FILE`
- "logrotate": the server log and the apps' access logs, reopened with USR1

Options: `listen` (nginx/apache, default "80" and "*:80"), `ssl_certificate` and
`ssl_certificate_key` (nginx: paths on the host; with them every server block also listens on
`ssl_listen`, default "443", with TLS 1.2+), `railcar` (path of the railcar executable for
systemd, default: the one next to this interpreter), `service` (unit name, default
"railcar"). Pure: reads templates, touches nothing else. Raises RenderError when the
config cannot be expressed safely (a path with spaces or quotes, no log files to rotate...).

Every value that reaches a template is checked or quoted for its format, here and not in the
templates: app names are names (settings.APP_NAME); what nginx and Apache take unquoted
matches _SAFE; the systemd command line is quoted word by word (`systemd_command`), `%` and
`$` escaped; shell words of logrotate's script go through shlex.quote. As a last guard the
template environment refuses any interpolated string holding a control character, so no
value, present or future, can start a line of its own.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass

import jinja2

from . import supervision
from .config import AppConfig, ServerConfig
from .settings import APP_NAME
from .views import Limits

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
KINDS = {"nginx": "nginx-site.conf.j2", "apache": "apache-vhost.conf.j2",
         "systemd": "railcar.service.j2", "logrotate": "logrotate.j2"}
DEFAULT_LISTEN = {"nginx": "80", "apache": "*:80"}
DEFAULT_SSL_LISTEN = "443"
DEFAULT_PROXY_TIMEOUT = 300     # seconds nginx/Apache wait on a request without a time limit
# What may appear unquoted in a web server config: no spaces, quotes, ; { } $ or #.
_SAFE = re.compile(r"[A-Za-z0-9_./:@%+=,\-\[\]*~]+")  # fullmatch: `$` would pass "x\n"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A word systemd takes as it is in ExecStart= (anything else is double-quoted).
_SYSTEMD_PLAIN = re.compile(r"[A-Za-z0-9_./:@+=,\-]+")
_UNIT_NAME = re.compile(r"[A-Za-z0-9:_.@\-]+")
_ACCOUNT = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,31}|[0-9]{1,10}")  # User=, Group=


class RenderError(Exception):
    """The config cannot be rendered; the message says which app and value."""


@dataclass
class AppView:
    """What the templates need of one app, derived and checked once."""

    name: str
    ident: str                  # safe in an nginx upstream name
    server_names: list[str]
    upstream: str               # nginx: `unix:/run/railcar/app.sock` or `127.0.0.1:8001`
    apache_url: str             # `unix:/run/railcar/app.sock|http://railcar-app/`
    static_url: str
    static_path: str | None     # through the root as configured (the `current` symlink)
    max_body_size: int
    client_max_body_size: str
    keepalive_timeout: float
    upstream_keepalive: int
    proxy_timeout: int


def _safe(value: str, app: str | None, what: str) -> str:
    if not _SAFE.fullmatch(value):
        where = f"app {app!r}: " if app else ""
        raise RenderError(f"{where}{what} {value!r} has characters a web server config "
                          "cannot take unquoted (spaces, quotes, ; { } $ #, control characters)")
    return value


def _name(name: str, where: str) -> str:
    if not isinstance(name, str) or not APP_NAME.fullmatch(name):
        raise RenderError(f"{where}: name {name!r} is not an app name (1 to 64 letters, digits, "
                          "'.', '_' or '-', starting with a letter or digit)")
    return name


def _listen(value: str, option: str = "--listen") -> str:
    """nginx `listen` / Apache <VirtualHost> address: safe words separated by spaces."""
    words = value.split(" ")
    if not all(word and _SAFE.fullmatch(word) for word in words):
        raise RenderError(f"option {option}: {value!r} has characters a web server config "
                          "cannot take (quotes, ; { } $ #, control characters)")
    return value


def _app_view(app: AppConfig) -> AppView:
    _name(app.name, f"app {app.name!r}")
    bind = app.binds[0]
    if bind.startswith("unix:"):
        path = _safe(bind[len("unix:"):], app.name, "socket path")
        upstream = f"unix:{path}"
        apache_url = f"unix:{path}|http://railcar-{app.name}/"
    else:
        host, _, port = bind.rpartition(":")
        host = host or "127.0.0.1"
        if host in ("0.0.0.0", "::", "[::]"):
            host = "127.0.0.1"
        upstream = _safe(f"{host}:{port}", app.name, "bind")
        apache_url = f"http://{upstream}/"
    static_path = None
    if app.static_dir:
        static_path = _safe(os.path.normpath(os.path.join(app.root, app.static_dir)),
                            app.name, "static path")
    limits = Limits(**app.limits)   # what the workers enforce; the table's defaults for the rest
    return AppView(
        name=app.name,
        ident=re.sub(r"[^A-Za-z0-9_]", "_", app.name),
        server_names=[_safe(n, app.name, "server name") for n in app.server_names],
        upstream=upstream,
        apache_url=apache_url,
        static_url=_safe(app.static_url, app.name, "static_url"),
        static_path=static_path,
        max_body_size=limits.max_body_size,
        client_max_body_size=str(limits.max_body_size),   # 0 = no limit, for nginx as for railcar
        keepalive_timeout=limits.keepalive_timeout,
        upstream_keepalive=max(1, int(limits.keepalive_timeout * 0.75)),
        proxy_timeout=(int(limits.max_request_time + 5) if limits.max_request_time
                       else DEFAULT_PROXY_TIMEOUT),
    )


def _railcar_executable() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "railcar")
    if os.access(script, os.X_OK):
        return [script]
    return [sys.executable, "-m", "railcar.cli"]


def systemd_word(word: str, program: bool = False) -> str:
    """One word of a systemd command line (ExecStart=), quoted so systemd reads it back
    as is: `%` (specifiers) doubled, `$` (variables, expanded in arguments, not in the
    program's path) doubled in arguments, double quotes and backslashes escaped inside double
    quotes. Control characters cannot be expressed: RenderError."""
    if _CONTROL.search(word):
        raise RenderError(f"{word!r} holds a control character: it cannot go on a systemd "
                          "command line")
    word = word.replace("%", "%%")
    if not program:
        word = word.replace("$", "$$")
    if _SYSTEMD_PLAIN.fullmatch(word):
        return word
    return '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_command(argv: list[str]) -> str:
    """A command line for ExecStart= from an argv list. The program must be an absolute
    path (systemd refuses anything else, and a leading - @ : + ! would change its meaning)
    without quotes or backslashes (systemd refuses those in a program's name)."""
    if not argv or not os.path.isabs(argv[0]) or any(c in argv[0] for c in "\"'\\"):
        raise RenderError(f"the program of the systemd unit must be an absolute path without "
                          f"quotes or backslashes, not {argv[0] if argv else ''!r}")
    return " ".join([systemd_word(argv[0], program=True)]
                    + [systemd_word(word) for word in argv[1:]])


def _context(kind: str, config: ServerConfig, options: dict) -> dict:
    apps = [_app_view(app) for app in config.apps]
    idents: set[str] = set()
    for index, view in enumerate(apps):   # "a.b" and "a-b" would share an upstream name
        if view.ident in idents:
            view.ident = f"{view.ident}_{index + 1}"
        idents.add(view.ident)
    source = config.config_file or "the command line"
    context = {"apps": apps, "source": source, "config": config,
               "listen": options.get("listen") or DEFAULT_LISTEN.get(kind, "")}
    if kind == "systemd":
        if not config.config_file:
            raise RenderError("the systemd unit runs `railcar start --config FILE`: "
                              "render it from a --config file")
        if config.daemon:
            raise RenderError(f"{config.config_file}: [server] daemon = true does not fit a "
                              "systemd service (systemd keeps the master in the foreground)")
        railcar = [options["railcar"]] if options.get("railcar") else _railcar_executable()
        if not os.path.isabs(railcar[0]) or any(c in railcar[0] for c in "\"'\\"):
            raise RenderError(f"option --railcar: {railcar[0]!r} is not an absolute path "
                              "without quotes or backslashes (what systemd can run)")
        context.update(systemd_context(
            systemd_command([*railcar, "start", "--config", config.config_file]),
            max(app.ready_timeout for app in config.apps),
            max(supervision.retire_timeout(config.graceful_timeout,
                                           app.limits.get("long_lived_timeout", 0.0))
                for app in config.apps),
            rendered_by="`railcar config systemd`", run_dir=config.run_dir))
    elif kind == "logrotate":
        logs = [config.log_file] if config.log_file else []
        logs += [app.access_log for app in config.apps
                 if app.access_log and app.access_log != "-"]
        if not logs:
            raise RenderError("no log files to rotate: set log_file in [server] "
                              "(and access_log per app)")
        service = options.get("service") or "railcar"
        if not _UNIT_NAME.fullmatch(service):
            raise RenderError(f"option --service: {service!r} is not a systemd unit name")
        context.update(log_files=[_safe(path, None, "log file") for path in logs],
                       pid_file=config.pid_file and shlex.quote(config.pid_file),
                       service=service)
    if kind in ("nginx", "apache"):
        context["listen"] = _listen(context["listen"])
    context["ssl"] = _ssl(options) if kind == "nginx" else None
    return context


def _ssl(options: dict) -> dict | None:
    """nginx's TLS listener: certificate and key paths (both or neither), `ssl_listen`."""
    cert, key = options.get("ssl_certificate"), options.get("ssl_certificate_key")
    if not cert and not key:
        return None
    if not (cert and key):
        missing = "--ssl-certificate-key" if cert else "--ssl-certificate"
        raise RenderError(f"option {missing}: needed too (nginx serves TLS with a certificate "
                          "and its key)")
    for option, path in (("--ssl-certificate", cert), ("--ssl-certificate-key", key)):
        if not os.path.isabs(path):
            raise RenderError(f"option {option}: {path!r} is not an absolute path")
        _safe(path, None, f"option {option}:")
    listen = _listen(options.get("ssl_listen") or DEFAULT_SSL_LISTEN, "--ssl-listen")
    return {"certificate": cert, "certificate_key": key, "listen": listen}


def systemd_context(exec_start: str, boot_timeout: float, retire_timeout: float,
                    rendered_by: str, run_dir: str | None = None, user: str | None = None,
                    group: str | None = None,
                    read_write_paths: list[str] | None = None) -> dict:
    """What the systemd unit template needs: a foreground `railcar start` command line (the
    master tells systemd it is ready, Type=notify), timeouts from the boot time and the
    master's wait for a retiring worker (`retire_timeout`: supervision.retire_timeout).
    `exec_start`: already quoted for systemd (see systemd_command). `user`/`group`: the
    account the master runs as (User=/Group=); `read_write_paths`: with them the unit is
    sandboxed (ProtectSystem=strict, ...) and may write only there."""
    runtime_directory = None
    if run_dir and os.path.dirname(run_dir) == "/run":
        runtime_directory = os.path.basename(run_dir)
        if not _UNIT_NAME.fullmatch(runtime_directory):
            raise RenderError(f"run_dir {run_dir!r}: systemd's RuntimeDirectory= cannot take "
                              "that name (letters, digits, '.', '_', '-' only)")
    for key, account in (("user", user), ("group", group)):
        if account is not None and not _ACCOUNT.fullmatch(account):
            raise RenderError(f"{key} {account!r} is not an account name systemd takes "
                              "(letters, digits, '_', '.', '-', or a number)")
    return dict(
        exec_start=exec_start, rendered_by=rendered_by, user=user, group=group or user,
        read_write_paths=[_safe(path, None, "writable path") for path in read_write_paths or []],
        start_timeout=int(boot_timeout + supervision.SYSTEMD_MARGIN),
        stop_timeout=int(retire_timeout + supervision.SYSTEMD_MARGIN),
        runtime_directory=runtime_directory)


def render_systemd_unit(exec_start: str | list[str], names: list[str], boot_timeout: float,
                        retire_timeout: float, source: str, rendered_by: str,
                        **account) -> str:
    """The systemd unit for a master started by `exec_start` (used where no --config file
    exists, e.g. `fab setup`): the same template as `railcar config systemd`.
    `exec_start`: an argv list, or a POSIX shell command line (shlex.join of one), quoted
    again here word by word for systemd."""
    argv = shlex.split(exec_start) if isinstance(exec_start, str) else list(exec_start)
    for name in names:
        _name(name, source)
    template = _environment().get_template(KINDS["systemd"])
    return template.render(apps=[{"name": name} for name in names], source=source,
                           **systemd_context(systemd_command(argv), boot_timeout,
                                             retire_timeout, rendered_by, **account))


def _one_line(value):
    """Jinja's finalize: every interpolated value, the last guard against line injection."""
    if isinstance(value, str) and _CONTROL.search(value):
        raise RenderError(f"{value!r} holds a control character (a newline would start a "
                          "line of its own in the rendered file)")
    return value


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True,
                              autoescape=False, finalize=_one_line)


def render(kind: str, server_config: ServerConfig, **options) -> str:
    """The configuration file of `kind` (see KINDS) for `server_config`, as text."""
    if kind not in KINDS:
        raise RenderError(f"unknown kind {kind!r} (one of: {', '.join(KINDS)})")
    template = _environment().get_template(KINDS[kind])
    source = server_config.config_file or "the command line"
    try:
        return template.render(**_context(kind, server_config, options))
    except RenderError as exc:  # say where the value came from, once
        if str(exc).startswith(source):
            raise
        raise RenderError(f"{source}: {exc}") from None
