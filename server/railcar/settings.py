"""Every setting of railcar, of the server and of the deploy, declared once.

Each row of SETTINGS names a setting, its converter (railcar.convert), its default and help,
its section, and for the server the `railcar start` flag and the railcar.toml key. The rest is
derived from the rows: the `railcar start` options (cli.py), the validation of railcar.toml
and --config files (config.py), the validation and defaults of the deploy's fabric.yaml
(deploy/settings.py), the typed views their readers use (`view`: views.Limits,
views.Supervision, deploy.settings.DeployConfig), and the test that README.md documents every
row (tests/test_settings.py).

A new setting is one new row, in the section of what reads it: "limits" if the worker's HTTP
server does (then also a field of views.Limits), "supervision" if the pool does (a field of
views.Supervision), else "app" or "server" (config.AppConfig/ServerConfig carry it); a deploy
key is a "deploy" row (a field of DeployConfig). README.md must name it (its flag, `key`, or
`key:` in an example), or tests/test_settings.py fails.

Sections:
- "app": one value per app: the [app] table of APP_DIR/railcar.toml, an [[apps]] table of a
  --config file, or `railcar start` flags for the app given on the command line.
- "limits": per app like "app"; what a worker enforces on its connections and requests
  (views.Limits, shipped to the worker).
- "supervision": per app like "app"; what the master enforces on the app's workers
  (views.Supervision, the pool's policy).
- "server": one value per master: the [server] table, or flags.
- "deploy": the keys of the `railcar:` section of the deploy's fabric.yaml (no flag).
- "nginx": the keys of the deploy's `railcar.nginx` mapping.

A deploy row may share its name with a server row (workers, bind, env...): it is the same
thing said in fabric.yaml, and the deploy hands its value to `railcar start`. BY_NAME holds
the rows `railcar start` takes; DEPLOY_KEYS and NGINX_KEYS the deploy's.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
from dataclasses import dataclass
from typing import Any, Callable

from .convert import (APP_NAME, abs_path, account, app_account, app_name, bind_list, boolean,
                      command, count_or_percent, deploy_root, either, env_lines, env_names,
                      env_table, fraction, host_header, host_names, hooks, module_name, name_list,
                      nginx_listen, nice_increment, nginx_path, non_negative_int, one_of, optional, per_host, port,
                      positive_int, proxy_list, relative_dir, relative_list, seconds,
                      seconds_or_off, seconds_or_zero, status_ranges, statuses, str_list,
                      systemd, tcp_bind, text, url_path, url_prefix, whole)

__all__ = ["APP_KEYS", "APP_NAME", "APP_SECTIONS", "BY_NAME", "DEPLOY_KEYS", "NGINX_KEYS",
           "SERVER_KEYS", "SETTINGS", "ConfigError", "Setting", "SubkeyError", "coerce",
           "default_admin_socket", "default_run_dir", "defaults", "names", "rows",
           "status_ranges", "subtable", "view"]

APP_SECTIONS = ("app", "limits", "supervision")   # set per app (railcar.toml [app], [[apps]])


class ConfigError(Exception):
    """A setting is wrong, the server's or the deploy's: the message names the key and where
    its value came from (file and table, flag, environment variable)."""


@dataclass(frozen=True)
class Setting:
    """One row. `convert` checks a raw value and returns its canonical form (or raises
    ValueError); `default` is the raw value when nothing sets it (None: unset, not converted).
    `flag` and `key` are the `railcar start` option and the railcar.toml key (server rows)."""

    name: str
    convert: Callable[[Any], Any]
    default: Any
    help: str
    section: str = "app"
    flag: str | None = None
    key: str | None = None
    multiple: bool = False
    is_flag: bool = False
    metavar: str | None = None


def default_run_dir() -> str:
    return "/run/railcar" if os.getuid() == 0 else f"/tmp/railcar-{os.getuid()}"


def default_admin_socket() -> str:
    explicit = os.environ.get("RAILCAR_ADMIN_SOCKET")
    if explicit:
        return explicit
    return os.path.join(default_run_dir(), "admin.sock")


SETTINGS: tuple[Setting, ...] = (
    # --- per app --------------------------------------------------------------------------
    Setting("name", app_name, None, "App name: letters, digits, '.', '_', '-' (it names the "
            "app's socket, upstream and unit lines; default: the app dir's name, other "
            "characters replaced by '-').",
            flag="--name", key="name"),
    Setting("root", text, None, "App directory (may be a `current` symlink).", key="root"),
    Setting("module", text, None, "WSGI callable as MODULE:CALLABLE.",
            flag="--app", key="module", metavar="MODULE:CALLABLE"),
    Setting("bind", bind_list, [], "Listen on HOST:PORT or unix:PATH (repeatable).",
            flag="--bind", key="bind", multiple=True, metavar="ADDRESS"),
    Setting("port", port, None,
            "Listen on --address:PORT (shorthand for --bind).", flag="--port", key="port"),
    Setting("address", text, "127.0.0.1", "Host that --port binds.",
            flag="--address", key="address"),
    Setting("workers", positive_int, 2, "Worker processes for the app.",
            flag="--workers", key="workers"),
    Setting("python", text, None,
            "Interpreter of the app (default: APP_DIR/.venv or APP_DIR/venv, else railcar's).",
            flag="--python", key="python", metavar="PATH"),
    Setting("env", env_table, {}, "Environment variable for the app (repeatable).",
            flag="--env", key="env", multiple=True, metavar="KEY=VALUE"),
    Setting("env_file", text, None,
            "File of KEY=VALUE lines (like systemd's EnvironmentFile) read by the master and "
            "added to the app's environment after --env, re-read at every restart. For "
            "secrets: values never appear on a command line, in the log or in status.",
            flag="--env-file", key="env_file", metavar="PATH"),
    Setting("access_log", text, None, "Access log: a file path, or '-' for the server log.",
            flag="--access-log", key="access_log", metavar="PATH"),
    Setting("access_log_format", either("text", "json"), "text",
            "text: one line per request (common log format and the duration in ms); "
            "json: one JSON object per line (time, remote_addr, method, path, query, "
            "protocol, status, bytes, duration, request_id, queue_time, user_agent, referer).",
            flag="--access-log-format", key="access_log_format", metavar="text|json"),
    Setting("certfile", text, None,
            "TLS certificate (PEM, with any intermediates after it) for the app's TCP binds: "
            "they then speak HTTPS only (TLS 1.2 or later), unix sockets stay plain. Read "
            "again by the new workers of every restart (a renewed certificate is picked up).",
            flag="--certfile", key="certfile", metavar="PATH"),
    Setting("keyfile", text, None,
            "Private key (PEM, without passphrase) of --certfile (default: in --certfile). "
            "Under a root master both files must be readable by the app's account, which the "
            "workers read them as.",
            flag="--keyfile", key="keyfile", metavar="PATH"),
    Setting("spawn_method", either("smart", "direct"), "smart",
            "smart: a preloader per release imports the app once and forks the workers "
            "(faster spawns, shared memory); direct: each worker imports the app itself, for "
            "apps that cannot be forked safely.",
            section="supervision", flag="--spawn-method", key="spawn_method",
            metavar="smart|direct"),
    Setting("hooks_module", module_name, None,
            "Module of the app's lifecycle hooks (importable from the release): "
            "on_starting(server), post_fork(worker), worker_exit(worker), "
            "on_timeout(worker, environ, stack); see README, Lifecycle hooks.",
            flag="--hooks-module", key="hooks_module", metavar="MODULE"),
    Setting("gc_freeze", boolean, True,
            "With smart spawning, the preloader runs gc.collect() and gc.freeze() after "
            "importing the app, before it forks workers, so the collector in the workers "
            "leaves the preloaded objects' pages shared (copy-on-write); "
            "--no-gc-freeze turns it off.",
            flag="--gc-freeze", key="gc_freeze", is_flag=True),
    Setting("boot_nice", nice_increment, 0,
            "Added to the nice value of a preloader (a worker with --spawn-method direct) while "
            "it imports the app, so a restart's boot leaves the CPU to the workers serving; "
            "back to normal before it forks or serves. Only where the priority can be "
            "restored (root, or RLIMIT_NICE, e.g. systemd LimitNICE=+0); 0 (the default) "
            "turns it off. On CPUs the workers keep saturated a niced boot gets only a small "
            "share and may not be ready within --boot-timeout.",
            flag="--boot-nice", key="boot_nice", metavar="N"),
    Setting("event_loop", either("auto", "epoll"), "auto",
            "Event loop of the app's workers and preloader. auto: gevent's epoll, with "
            "sleeps (time.sleep, gevent.sleep) that end on time, woken by a timerfd (epoll "
            "waits in whole milliseconds: a 20 ms sleep returned up to 1 ms late); epoll: "
            "gevent's default, unchanged. GEVENT_BACKEND or GEVENT_LOOP in the app's "
            "environment win over it.",
            flag="--event-loop", key="event_loop", metavar="auto|epoll"),
    Setting("boot_timeout", seconds, 60.0, "Seconds a new worker has to become ready.",
            flag="--boot-timeout", key="boot_timeout"),
    # Health check: a new worker calls it in-process before it takes any connection.
    Setting("health_path", url_path, None,
            "Health check: a new worker GETs this path from its own app, in its own process, "
            "before it accepts connections; a worker whose check fails never serves and a "
            "restart onto it aborts (default: no check).",
            flag="--health-path", key="health_path", metavar="PATH"),
    Setting("health_host", host_header, None,
            "Host header of the health check (default: the first server_names entry, else "
            "localhost).", flag="--health-host", key="health_host", metavar="HOST"),
    Setting("health_statuses", statuses, "200-399",
            "Statuses of a passing health check: codes and ranges, e.g. \"200-299,301\".",
            flag="--health-statuses", key="health_statuses", metavar="LIST"),
    Setting("health_timeout", seconds, 10.0,
            "Seconds the health check has to answer (counted after the app imported).",
            flag="--health-timeout", key="health_timeout"),
    # Canary: the first new worker of a rolling restart serves beside the old ones first.
    Setting("canary_duration", seconds_or_off, 0.0,
            "Canary: the first new worker of a rolling restart serves its share beside the "
            "old workers for this many seconds before the rest follow; too many 5xx abort "
            "the restart (0: off).", flag="--canary-duration", key="canary_duration",
            metavar="SECONDS"),
    Setting("canary_min_requests", non_negative_int, 10,
            "Requests the canary must serve during canary_duration for its error rate to be "
            "judged (fewer: the restart goes on).",
            flag="--canary-min-requests", key="canary_min_requests"),
    Setting("canary_max_error_rate", fraction, 0.1,
            "Share of the canary's responses (0..1) that may be 5xx; above it the restart "
            "aborts and the canary is retired.",
            flag="--canary-max-error-rate", key="canary_max_error_rate", metavar="RATE"),
    # Limits: a worker past one is replaced (new one ready first, then the old one retires).
    Setting("max_requests", non_negative_int, 0,
            "Replace a worker after it served this many requests (0: never).",
            section="supervision", flag="--max-requests", key="max_requests"),
    Setting("max_requests_jitter", non_negative_int, 0,
            "Add a random 0..N to max_requests for each worker, so they are not all replaced "
            "at once.", section="supervision", flag="--max-requests-jitter",
            key="max_requests_jitter"),
    Setting("memory_limit", non_negative_int, 0,
            "Replace a worker whose own memory (USS: the pages no other process shares, "
            "so not what it shares with its preloader) grows past this many MiB "
            "(0: no limit).",
            section="supervision", flag="--memory-limit", key="memory_limit", metavar="MIB"),
    Setting("max_request_time", seconds_or_off, 0.0,
            "Seconds a request may run; past it the client gets 504, the request's stack is "
            "logged and the worker is replaced (0: no limit). Pure-Python CPU work is "
            "interrupted too (a CPU-time timer, SIGVTALRM, in the worker).",
            section="limits", flag="--max-request-time", key="max_request_time",
            metavar="SECONDS"),
    Setting("max_concurrent_requests", non_negative_int, 0,
            "Requests one worker serves at once; more are answered 503 at once, with "
            "Retry-After (0: no limit).",
            section="limits", flag="--max-concurrent-requests", key="max_concurrent_requests"),
    Setting("max_workers", non_negative_int, 0,
            "Grow the pool up to this many workers while all are busy; --workers is then the "
            "minimum (0: a fixed pool of --workers).", section="supervision",
            flag="--max-workers", key="max_workers"),
    Setting("idle_timeout", seconds, 60.0,
            "Seconds a worker above --workers may stay idle before it is shut down.",
            section="supervision", flag="--idle-timeout", key="idle_timeout"),
    Setting("environment", either("development", "production"), "production",
            "development: a request to an app that failed to boot gets an HTML page with the "
            "error; production: a plain 503 (the error goes to the log).",
            section="supervision", flag="--environment", key="environment",
            metavar="development|production"),
    Setting("max_request_line", positive_int, 8190, "Longest request line in bytes (414).",
            section="limits", flag="--max-request-line", key="max_request_line"),
    Setting("max_header_size", positive_int, 65536,
            "Largest request header section in bytes (431).",
            section="limits", flag="--max-header-size", key="max_header_size"),
    Setting("max_headers", positive_int, 100, "Most request header fields (431).",
            section="limits", flag="--max-headers", key="max_headers"),
    Setting("max_body_size", non_negative_int, 0,
            "Largest request body in bytes, 0 = no limit (413).",
            section="limits", flag="--max-body-size", key="max_body_size"),
    Setting("keepalive_timeout", seconds, 20.0, "Seconds an idle keep-alive connection is kept.",
            section="limits", flag="--keepalive-timeout", key="keepalive_timeout"),
    Setting("header_timeout", seconds, 30.0, "Seconds a client has to send the request headers.",
            section="limits", flag="--header-timeout", key="header_timeout"),
    Setting("worker_connections", positive_int, 1000,
            "Most open connections per worker; at the limit a new client makes the worker "
            "close its longest-idle connection (keep-alive, or not a byte sent yet).",
            section="limits", flag="--worker-connections", key="worker_connections"),
    Setting("client_body_timeout", seconds, 60.0,
            "Seconds the worker waits for more of a request body (like nginx's); a client "
            "that stalls longer is answered 408 if the response has not started.",
            section="limits", flag="--client-body-timeout", key="client_body_timeout",
            metavar="SECONDS"),
    Setting("client_body_min_rate", non_negative_int, 500,
            "Bytes per second a request body must average, counted over the time spent "
            "waiting for it after a first --client-body-timeout of grace; slower gets 408 "
            "(0: no minimum).",
            section="limits", flag="--client-body-min-rate", key="client_body_min_rate",
            metavar="BYTES"),
    Setting("long_lived_timeout", seconds_or_zero("end them at once"), 30.0,
            "Seconds a retiring worker keeps its long-lived connections (WebSockets, "
            "server-sent events, responses streaming without a Content-Length) before it "
            "ends them, a WebSocket with the close frame 1001 (going away); separate from "
            "--graceful-timeout, which bounds ordinary requests (0: end them at once).",
            section="limits", flag="--long-lived-timeout", key="long_lived_timeout",
            metavar="SECONDS"),
    Setting("trusted_proxies", proxy_list, ["127.0.0.0/8", "::1/128", "unix"],
            "Peers whose X-Forwarded-For/-Proto are believed: addresses, CIDR networks, or "
            "'unix' for unix socket peers (repeatable).",
            section="limits", flag="--trusted-proxy", key="trusted_proxies", multiple=True,
            metavar="ADDRESS"),
    Setting("server_names", name_list, [], "Host names the web server routes to the app "
            "(repeatable).", flag="--server-name", key="server_names", multiple=True,
            metavar="HOST"),
    Setting("static_dir", relative_dir, None,
            "Directory of static files, relative to the app root, served by the web server.",
            flag="--static-dir", key="static_dir", metavar="DIR"),
    Setting("static_url", url_prefix, "/static/", "URL path where static_dir is served.",
            flag="--static-url", key="static_url", metavar="PATH"),
    Setting("user", text, None, "Account the app runs as (interpreter check, preloader, "
            "workers) when the master runs as root (default: the owner of the app root; "
            "refused if that is root, unless --allow-root).",
            flag="--user", key="user", metavar="USER"),
    Setting("group", text, None, "Group the app runs as when the master runs as root "
            "(default: the user's primary group; never root unless --allow-root).",
            flag="--group", key="group", metavar="GROUP"),
    Setting("allow_root", boolean, False,
            "Let the app run as root when the master runs as root and `user` is root or "
            "unset on a root-owned app root (without it railcar refuses to start the app).",
            flag="--allow-root", key="allow_root", is_flag=True),
    Setting("socket_group", text, None, "Group given the app's unix sockets (mode 0660), "
            "e.g. the web server's (default as root: www-data if it exists).",
            flag="--socket-group", key="socket_group", metavar="GROUP"),
    # --- per server -----------------------------------------------------------------------
    Setting("config", text, None, "Server config file with [server] and [[apps]] tables.",
            section="server", flag="--config", metavar="FILE"),
    Setting("admin_socket", text, None, "Admin socket path (mode 0600) "
            "(default: $RAILCAR_ADMIN_SOCKET, else /run/railcar/admin.sock as root, "
            "/tmp/railcar-UID/admin.sock otherwise).",
            section="server", flag="--admin-socket", key="admin_socket", metavar="PATH"),
    Setting("admin_group", text, None,
            "Group that may use the admin socket (status, restart...): the socket becomes mode "
            "0660 with that group and its directory group-traversable (default: the master's "
            "account alone, mode 0600).",
            section="server", flag="--admin-group", key="admin_group", metavar="GROUP"),
    Setting("pid_file", text, None, "Write the master's pid here.",
            section="server", flag="--pid-file", key="pid_file", metavar="PATH"),
    Setting("log_file", text, None, "Server log file (default: stderr).",
            section="server", flag="--log-file", key="log_file", metavar="PATH"),
    Setting("daemon", boolean, False, "Detach and run in the background.",
            section="server", flag="--daemon", key="daemon", is_flag=True),
    Setting("graceful_timeout", seconds, 30.0,
            "Seconds a retiring worker has to finish its requests.",
            section="server", flag="--graceful-timeout", key="graceful_timeout"),
    Setting("metrics_bind", tcp_bind, None,
            "Serve Prometheus metrics at http://HOST:PORT/metrics (default: off).",
            section="server", flag="--metrics-bind", key="metrics_bind", metavar="HOST:PORT"),
    Setting("run_dir", text, None, "Directory of the apps' unix sockets: an app of a --config "
            "file without `bind` listens on unix:RUN_DIR/APP.sock "
            "(default: /run/railcar as root, else /tmp/railcar-UID).",
            section="server", flag="--run-dir", key="run_dir", metavar="DIR"),
)

BY_NAME = {s.name: s for s in SETTINGS}

SETTINGS += (
    # --- the deploy: `railcar:` in fabric.yaml (~/.fabric.yaml, -f FILE, FABRIC_RAILCAR_*) ----
    Setting("app", optional(app_name), None,
            "App name: the service, admin socket and status name (required).",
            section="deploy"),
    Setting("source", text, ".",
            "A local git repo (ships `git archive` of ref) or a plain directory.",
            section="deploy"),
    Setting("ref", text, "HEAD", "Git ref to deploy; ignored for a plain directory.",
            section="deploy"),
    Setting("deploy_to", optional(deploy_root), None,
            "DEPLOY_TO on the host (default /srv/APP; at least two path components).",
            section="deploy"),
    Setting("hosts", str_list, [], "Hosts deployed to when no -H is given.", section="deploy"),
    Setting("per_host", per_host, {},
            "Overrides of any key for one host, by the name the host was given: "
            "{host: {key: value}}.", section="deploy"),
    Setting("keep_releases", whole(1), 5, "Good releases kept by cleanup.", section="deploy"),
    Setting("shared_dirs", relative_list, [], "Directories of shared/ linked into every "
            "release.", section="deploy"),
    Setting("shared_files", relative_list, [],
            "Files of shared/ linked into every release; they must exist before a deploy.",
            section="deploy"),
    Setting("requirements", text, "requirements.txt",
            "The release's requirements file (relative to the release; may be missing).",
            section="deploy"),
    Setting("python", text, "python3", "Interpreter on the host for the virtualenvs.",
            section="deploy"),
    Setting("pip_args", str_list, [], "Extra `pip install` arguments (e.g. an index URL).",
            section="deploy"),
    Setting("wheel", optional(text), None,
            "railcar wheel to upload (default: built locally from the installed railcar).",
            section="deploy"),
    Setting("wheelhouse", optional(text), None,
            "Local directory of extra wheels, uploaded for pip --find-links.", section="deploy"),
    Setting("workers", whole(1), BY_NAME["workers"].default, "Worker processes (--workers).",
            section="deploy"),
    Setting("bind", str_list, [],
            "Extra binds; unix:DEPLOY_TO/run/app.sock is always bound.", section="deploy"),
    Setting("env", env_lines, {},
            "Environment of the app and of the hooks (written to the env file).",
            section="deploy"),
    Setting("secrets", env_names, [],
            "Names of variables of the deploying machine's environment added to the env file "
            "at deploy time (never on a command line).", section="deploy"),
    Setting("user", optional(app_account), None,
            "The app account (default: the app's name); never root.", section="deploy"),
    Setting("deploy_user", optional(account), None,
            "Owner of deploy_to, the SSH user of deploy (default: setup's).", section="deploy"),
    Setting("known_hosts", optional(text), None,
            "A project known_hosts file (relative to the fabric.yaml), checked besides "
            "~/.ssh/known_hosts.", section="deploy"),
    Setting("trust_new_hosts", boolean, False,
            "Trust on first use: record an unknown host's key (a changed key is refused).",
            section="deploy"),
    Setting("hooks", hooks, [],
            "Release commands run in the new release before the swap: \"cmd\" or [argv].",
            section="deploy"),
    Setting("health_path", text, "/",
            "Health check path, checked by the server before a worker serves.",
            section="deploy"),
    Setting("health_timeout", whole(1), 30,
            "Seconds for the health check (the server's, and the publish's health stage).",
            section="deploy"),
    Setting("lock_timeout", whole(1), 3600,
            "Seconds after which a deploy lock held from another machine is stale.",
            section="deploy"),
    Setting("canary_hosts", whole(0), 0,
            "Publish to the first N hosts, watch them, then the rest.", section="deploy"),
    Setting("canary_watch", whole(0), 60,
            "Seconds the canary hosts are watched before the rest publish.", section="deploy"),
    Setting("batch_size", count_or_percent(1), "100%",
            "Hosts that publish at once after the canaries: N or \"P%\".", section="deploy"),
    Setting("failure_budget", count_or_percent(0), 0,
            "Hosts that may fail (each restores itself): N or \"P%\".", section="deploy"),
    Setting("on_batch_failure", one_of("rollback", "keep"), "rollback",
            "Over the budget: hosts already on the release roll back, or keep it.",
            section="deploy"),
    Setting("systemd", systemd, "auto",
            "auto: a systemd unit when systemd runs on the host; false: railcar start "
            "--daemon.", section="deploy"),
    Setting("nginx", lambda value: subtable("nginx", value), {},
            "The app's nginx site, installed by setup and deploy: a mapping of the nginx "
            "keys.", section="deploy"),
    # --- the deploy's `railcar.nginx` mapping: off unless enabled. The site is rendered on the
    # host by `railcar config nginx` from the server's own command line, written to
    # SITES_DIR/railcar-APP.conf when it changed, checked with test_command (a failure puts
    # the old site back), then nginx is reloaded.
    Setting("enabled", boolean, False, "Install the app's nginx site.", section="nginx"),
    Setting("sites_dir", abs_path, "/etc/nginx/conf.d",
            "A directory nginx.conf includes (*.conf).", section="nginx"),
    Setting("server_names", host_names, [], "server_name (default: \"_\", any host).",
            section="nginx"),
    Setting("listen", nginx_listen, "80", "nginx `listen` value.", section="nginx"),
    Setting("test_command", command, ["nginx", "-t"],
            "\"cmd\" or [argv]: checks the whole nginx config.", section="nginx"),
    Setting("reload_command", command, ["systemctl", "reload", "nginx"],
            "\"cmd\" or [argv]: reloads nginx.", section="nginx"),
    Setting("user", optional(account), "www-data",
            "nginx's workers' account: joins the app's group.", section="nginx"),
    Setting("ssl_certificate", optional(nginx_path), None,
            "Certificate (PEM, a path on the host): with ssl_certificate_key the site also "
            "listens with TLS on ssl_listen.", section="nginx"),
    Setting("ssl_certificate_key", optional(nginx_path), None,
            "Private key of ssl_certificate (a path on the host, readable by nginx's master).",
            section="nginx"),
    Setting("ssl_listen", nginx_listen, "443", "nginx `listen` value of the TLS listener.",
            section="nginx"),
)


def rows(*sections: str) -> tuple[Setting, ...]:
    """The rows of `sections`, in table order."""
    return tuple(s for s in SETTINGS if s.section in sections)


def names(*sections: str) -> tuple[str, ...]:
    return tuple(s.name for s in rows(*sections))


def defaults(*sections: str) -> dict[str, Any]:
    """Raw defaults of `sections` (fresh copies: callers may change lists and tables)."""
    return {s.name: copy.deepcopy(s.default) for s in rows(*sections)}


APP_KEYS = {s.key: s for s in rows(*APP_SECTIONS) if s.key}
SERVER_KEYS = {s.key: s for s in rows("server") if s.key}
DEPLOY_KEYS = {s.name: s for s in rows("deploy")}
NGINX_KEYS = {s.name: s for s in rows("nginx")}


def coerce(setting: Setting, value: Any, where: str) -> Any:
    """Validate one value; a ConfigError names the key and where the value came from."""
    try:
        return setting.convert(value)
    except (TypeError, ValueError) as exc:
        label = setting.key or setting.flag or setting.name
        raise ConfigError(f"{where}: {label}: {exc} (got {value!r})") from None


class SubkeyError(ValueError):
    """A key inside a mapping setting is wrong: reported as SETTING.KEY."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def subtable(section: str, value: Any) -> dict[str, Any]:
    """A mapping setting made of the rows of `section`: each key converted, defaults filled
    in; an unknown key is a ValueError, a bad value a SubkeyError naming its key."""
    table = {s.name: s for s in rows(section)}
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping with keys {', '.join(table)}")
    unknown = sorted(set(value) - set(table))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(table)})")
    out = {}
    for key, setting in table.items():
        raw = value.get(key, setting.default)
        try:
            out[key] = setting.convert(raw)
        except (TypeError, ValueError) as exc:
            message = str(exc)   # a message that shows the value (or an item) needs no "got"
            shown = [raw, *raw] if isinstance(raw, list) else [raw]
            raise SubkeyError(key, message if any(repr(v) in message for v in shown)
                              else f"{message} (got {raw!r})") from None
    return out


def view(section: str, *extra: str, without: tuple[str, ...] = ()):
    """Class decorator, under @dataclass: the class is the typed view of `section`.

    Its annotated fields must be the section's rows (less `without`) plus `extra` (fields
    that are no settings, declared first, without defaults); each row's field gets the row's
    default, converted (lists and tables through a default_factory). The class gains
    `from_values(values, **extra)`: the view of a dict of converted values holding (at least)
    the section's names. So a view cannot drift from the table: a row added, renamed or
    dropped without its field is a TypeError at import.
    """
    def apply(cls):
        table = {s.name: s for s in rows(section) if s.name not in without}
        fields = [name for name in inspect.get_annotations(cls) if name not in extra]
        if sorted(fields) != sorted(table):
            raise TypeError(f"{cls.__name__} must have one field per row of section "
                            f"{section!r}: missing {sorted(set(table) - set(fields))}, "
                            f"not rows {sorted(set(fields) - set(table))}")
        for name, setting in table.items():
            value = None if setting.default is None else setting.convert(setting.default)
            if isinstance(value, (list, dict, set)):
                setattr(cls, name, dataclasses.field(
                    default_factory=lambda value=value: copy.deepcopy(value)))
            else:
                setattr(cls, name, value)

        def from_values(view_cls, values: dict[str, Any], **given):
            return view_cls(**{name: values[name] for name in table}, **given)
        cls.from_values = classmethod(from_values)
        return cls
    return apply
