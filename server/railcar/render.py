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

Options: `listen` (nginx/apache, default "80" and "*:80"), `railcar` (path of the railcar
executable for systemd, default: the one next to this interpreter), `service` (unit name,
default "railcar"). Pure: reads templates, touches nothing else. Raises RenderError when the
config cannot be expressed safely (a path with spaces or quotes, no log files to rotate...).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

import jinja2

from .config import AppConfig, ServerConfig

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")
KINDS = {"nginx": "nginx-site.conf.j2", "apache": "apache-vhost.conf.j2",
         "systemd": "railcar.service.j2", "logrotate": "logrotate.j2"}
DEFAULT_LISTEN = {"nginx": "80", "apache": "*:80"}
DEFAULT_PROXY_TIMEOUT = 300     # seconds nginx/Apache wait on a request without a time limit
# What may appear unquoted in a web server config: no spaces, quotes, ; { } $ or #.
_SAFE = re.compile(r"^[A-Za-z0-9_./:@%+=,\-\[\]*~]+$")


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


def _safe(value: str, app: str, what: str) -> str:
    if not _SAFE.match(value):
        raise RenderError(f"app {app!r}: {what} {value!r} has characters a web server config "
                          "cannot take unquoted (spaces, quotes, ; {{ }} $ #)")
    return value


def _app_view(app: AppConfig) -> AppView:
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
    limits = app.limits
    keepalive = float(limits.get("keepalive_timeout", 20.0))
    max_request_time = float(limits.get("max_request_time") or 0)
    max_body = int(limits.get("max_body_size", 0))
    return AppView(
        name=app.name,
        ident=re.sub(r"[^A-Za-z0-9_]", "_", app.name),
        server_names=[_safe(n, app.name, "server name") for n in app.server_names],
        upstream=upstream,
        apache_url=apache_url,
        static_url=_safe(app.static_url, app.name, "static_url"),
        static_path=static_path,
        max_body_size=max_body,
        client_max_body_size=str(max_body),   # 0 = no limit, for nginx as for railcar
        keepalive_timeout=keepalive,
        upstream_keepalive=max(1, int(keepalive * 0.75)),
        proxy_timeout=int(max_request_time + 5) if max_request_time else DEFAULT_PROXY_TIMEOUT,
    )


def _railcar_executable() -> str:
    script = os.path.join(os.path.dirname(sys.executable), "railcar")
    if os.access(script, os.X_OK):
        return script
    return f"{sys.executable} -m railcar.cli"


def _context(kind: str, config: ServerConfig, options: dict) -> dict:
    apps = [_app_view(app) for app in config.apps]
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
        railcar = options.get("railcar") or _railcar_executable()
        config_file = _safe(config.config_file, "-", "config file")
        context.update(systemd_context(
            f"{railcar} start --config {config_file}",
            max(app.boot_timeout for app in config.apps), config.graceful_timeout,
            rendered_by="`railcar config systemd`", run_dir=config.run_dir))
    elif kind == "logrotate":
        logs = [config.log_file] if config.log_file else []
        logs += [app.access_log for app in config.apps
                 if app.access_log and app.access_log != "-"]
        if not logs:
            raise RenderError("no log files to rotate: set log_file in [server] "
                              "(and access_log per app)")
        context.update(log_files=[_safe(path, "-", "log file") for path in logs],
                       pid_file=config.pid_file, service=options.get("service") or "railcar")
    return context


def systemd_context(exec_start: str, boot_timeout: float, graceful_timeout: float,
                    rendered_by: str, run_dir: str | None = None) -> dict:
    """What the systemd unit template needs: a foreground `railcar start` command line (the
    master tells systemd it is ready, Type=notify), timeouts from boot and graceful times."""
    return dict(
        exec_start=exec_start, rendered_by=rendered_by,
        start_timeout=int(boot_timeout + 30), stop_timeout=int(graceful_timeout + 30),
        runtime_directory=(os.path.basename(run_dir)
                           if run_dir and os.path.dirname(run_dir) == "/run" else None))


def render_systemd_unit(exec_start: str, names: list[str], boot_timeout: float,
                        graceful_timeout: float, source: str, rendered_by: str) -> str:
    """The systemd unit for a master started by `exec_start` (used where no --config file
    exists, e.g. `fab setup`): the same template as `railcar config systemd`."""
    template = _environment().get_template(KINDS["systemd"])
    return template.render(apps=[{"name": name} for name in names], source=source,
                           **systemd_context(exec_start, boot_timeout, graceful_timeout,
                                             rendered_by))


def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                              undefined=jinja2.StrictUndefined, trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True,
                              autoescape=False)


def render(kind: str, server_config: ServerConfig, **options) -> str:
    """The configuration file of `kind` (see KINDS) for `server_config`, as text."""
    if kind not in KINDS:
        raise RenderError(f"unknown kind {kind!r} (one of: {', '.join(KINDS)})")
    template = _environment().get_template(KINDS[kind])
    return template.render(**_context(kind, server_config, options))
