"""Every setting of railcar, declared once.

Each row of SETTINGS names a setting, its type, default, the `railcar start` flag that sets
it and the key that sets it in a railcar.toml. The CLI options, config-file validation and
the help text are all derived from this one table, so a new setting is one new row.

Scopes:
- "server": one value per master ([server] table of a --config file, or CLI flags).
- "app": one value per app ([app] table of APP_DIR/railcar.toml, an [[apps]] table of a
  --config file, or CLI flags for the app given on the command line).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from typing import Any, Callable


class ConfigError(Exception):
    """A configuration value is wrong; the message names the key and where it came from."""


def _number(value: Any, convert, expected: str, out_of_range, message: str):
    """`value` as `convert` (int or float), refused if `out_of_range(number)`.

    A boolean is refused outright: YAML/TOML `true` would otherwise pass as 1.
    """
    if isinstance(value, bool):
        raise ValueError(expected)
    number = convert(value)
    if out_of_range(number):
        raise ValueError(message)
    return number


def _positive_int(value: Any) -> int:
    return _number(value, int, "expected a whole number", lambda n: n < 1,
                   "must be at least 1")


def _non_negative_int(value: Any) -> int:
    return _number(value, int, "expected a whole number", lambda n: n < 0,
                   "must not be negative")


def _seconds(value: Any) -> float:
    return _number(value, float, "expected a number of seconds", lambda n: n <= 0,
                   "must be more than 0 seconds")


def _seconds_or_off(value: Any) -> float:
    """Seconds, or 0 to turn the limit off."""
    return _number(value, float, "expected a number of seconds (0: off)", lambda n: n < 0,
                   "must not be negative (0: off)")


def _environment(value: Any) -> str:
    if value not in ("development", "production"):
        raise ValueError("expected 'development' or 'production'")
    return value


def _spawn_method(value: Any) -> str:
    if value not in ("smart", "direct"):
        raise ValueError("expected 'smart' or 'direct'")
    return value


def _tcp_bind(value: Any) -> str:
    text = _bind(value)
    if text.startswith("unix:"):
        raise ValueError("expected HOST:PORT")
    return text


# Control characters (C0, DEL) never belong in a setting: a newline in a name or path would
# become a line of its own in a rendered nginx, Apache or systemd file.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A name nginx's server_name and Apache's ServerName/ServerAlias take unquoted.
_HOST_NAME = re.compile(r"[A-Za-z0-9*_.~:\-]{1,253}")


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters (newline, tab, NUL...)")
    return value


def _app_name(value: Any) -> str:
    """The app's name: it names its socket, nginx upstream, Apache backend and log lines."""
    text = _text(value)
    if not APP_NAME.fullmatch(text):
        raise ValueError("expected 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    return text


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _bind(value: Any) -> str:
    """`HOST:PORT`, `[::1]:PORT`, `:PORT` or `unix:PATH`."""
    text = _text(value)
    if text.startswith("unix:"):
        if len(text) == len("unix:"):
            raise ValueError("unix: needs a socket path")
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT or unix:PATH")
    return text


def _port(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a port number")
    number = int(value)
    if not 0 < number < 65536:
        raise ValueError("must be a port number from 1 to 65535")
    return number


def _env_pair(value: Any) -> str:
    text = _text(value)
    if "=" not in text or text.startswith("="):
        raise ValueError(f"{text!r} is not KEY=VALUE")
    return text


def _bind_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    return [_bind(item) for item in items]


def _env_table(value: Any) -> dict[str, str]:
    """From the CLI: a list of KEY=VALUE; from TOML: a table of strings."""
    if isinstance(value, dict):
        return {str(key): str(val) for key, val in value.items()}
    pairs = [_env_pair(item) for item in ([value] if isinstance(value, str) else value)]
    return dict(pair.split("=", 1) for pair in pairs)


def _name_list(value: Any) -> list[str]:
    """Host names for the web server's `server_name`: a string or a list of strings."""
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, str) or not _HOST_NAME.fullmatch(item):
            raise ValueError(f"{item!r} is not a host name (letters, digits, '.', '-', '_', "
                             "a '*' wildcard, ':PORT')")
    return items


def _relative_dir(value: Any) -> str:
    """A directory inside the release (the web server reaches it through `current`)."""
    text = _text(value)
    if text.startswith("/") or ".." in text.split("/") or any(c.isspace() for c in text):
        raise ValueError(f"{text!r} must be relative to the app root, without '..' or spaces")
    return text.rstrip("/") or "."


def _url_prefix(value: Any) -> str:
    text = _text(value)
    if not text.startswith("/") or any(c.isspace() or c in ";{}\"'" for c in text):
        raise ValueError(f"{text!r} is not a URL path starting with /")
    return text.rstrip("/") + "/"


def _proxy_list(value: Any) -> list[str]:
    """Addresses or CIDR networks, and "unix" for peers on a unix socket."""
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if item == "unix":
            out.append(item)
            continue
        try:
            out.append(str(ipaddress.ip_network(_text(item), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address, a CIDR network or 'unix'") from None
    return out


def _url_path(value: Any) -> str:
    """A request target in origin form: /path, optionally with ?query."""
    text = _text(value)
    if not text.startswith("/") or any(c.isspace() or ord(c) < 32 or ord(c) == 127
                                       for c in text):
        raise ValueError(f"{text!r} is not a URL path starting with / (no spaces)")
    return text


def _host_header(value: Any) -> str:
    text = _text(value)
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 or c in "/\\@" for c in text):
        raise ValueError(f"{text!r} is not a host name (HOST or HOST:PORT)")
    return text


def status_ranges(value: Any) -> list[tuple[int, int]]:
    """HTTP statuses as inclusive ranges, from "200-299,301" or a list like [200, "300-399"]."""
    items = value.split(",") if isinstance(value, str) else list(value)
    ranges = []
    for item in items:
        text = str(item).strip()
        low, sep, high = text.partition("-")
        if not low.strip().isdigit() or (sep and not high.strip().isdigit()):
            raise ValueError(f"{text!r} is not a status or a range like 200-299")
        low_code, high_code = int(low), int(high if sep else low)
        if not 100 <= low_code <= high_code <= 599:
            raise ValueError(f"{text!r} is not a status range within 100-599")
        ranges.append((low_code, high_code))
    if not ranges:
        raise ValueError("expected at least one status")
    return ranges


def _statuses(value: Any) -> str:
    """Validated and written the one canonical way: "200-299,301"."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (str, list, tuple)):
        raise ValueError("expected statuses like \"200-299,301\"")
    return ",".join(f"{low}" if low == high else f"{low}-{high}"
                    for low, high in status_ranges(value))


def _fraction(value: Any) -> float:
    return _number(value, float, "expected a number from 0 to 1", lambda n: not 0 <= n <= 1,
                   "must be from 0 to 1 (0.05 means 5%)")


def _default_run_dir() -> str:
    return "/run/railcar" if os.getuid() == 0 else f"/tmp/railcar-{os.getuid()}"


@dataclass(frozen=True)
class Setting:
    name: str
    type: Callable[[Any], Any]
    default: Any
    help: str
    scope: str = "app"
    flag: str | None = None
    key: str | None = None
    multiple: bool = False
    is_flag: bool = False
    metavar: str | None = None


def _default_admin_socket() -> str:
    explicit = os.environ.get("RAILCAR_ADMIN_SOCKET")
    if explicit:
        return explicit
    return os.path.join(_default_run_dir(), "admin.sock")


SETTINGS: tuple[Setting, ...] = (
    # --- per app --------------------------------------------------------------------------
    Setting("name", _app_name, None, "App name: letters, digits, '.', '_', '-' (it names the "
            "app's socket, upstream and unit lines; default: the app dir's name, other "
            "characters replaced by '-').",
            flag="--name", key="name"),
    Setting("root", _text, None, "App directory (may be a `current` symlink).", key="root"),
    Setting("module", _text, None, "WSGI callable as MODULE:CALLABLE.",
            flag="--app", key="module", metavar="MODULE:CALLABLE"),
    Setting("bind", _bind_list, [], "Listen on HOST:PORT or unix:PATH (repeatable).",
            flag="--bind", key="bind", multiple=True, metavar="ADDRESS"),
    Setting("port", _port, None,
            "Listen on --address:PORT (shorthand for --bind).", flag="--port", key="port"),
    Setting("address", _text, "127.0.0.1", "Host that --port binds.",
            flag="--address", key="address"),
    Setting("workers", _positive_int, 2, "Worker processes for the app.",
            flag="--workers", key="workers"),
    Setting("python", _text, None,
            "Interpreter of the app (default: APP_DIR/.venv or APP_DIR/venv, else railcar's).",
            flag="--python", key="python", metavar="PATH"),
    Setting("env", _env_table, {}, "Environment variable for the app (repeatable).",
            flag="--env", key="env", multiple=True, metavar="KEY=VALUE"),
    Setting("env_file", _text, None,
            "File of KEY=VALUE lines (like systemd's EnvironmentFile) read by the master and "
            "added to the app's environment after --env, re-read at every restart. For "
            "secrets: values never appear on a command line, in the log or in status.",
            flag="--env-file", key="env_file", metavar="PATH"),
    Setting("access_log", _text, None, "Access log: a file path, or '-' for the server log.",
            flag="--access-log", key="access_log", metavar="PATH"),
    Setting("spawn_method", _spawn_method, "smart",
            "smart: a preloader per release imports the app once and forks the workers "
            "(faster spawns, shared memory); direct: each worker imports the app itself, for "
            "apps that cannot be forked safely.",
            flag="--spawn-method", key="spawn_method", metavar="smart|direct"),
    Setting("boot_timeout", _seconds, 60.0, "Seconds a new worker has to become ready.",
            flag="--boot-timeout", key="boot_timeout"),
    # Health check: a new worker calls it in-process before it takes any connection.
    Setting("health_path", _url_path, None,
            "Health check: a new worker GETs this path from its own app, in its own process, "
            "before it accepts connections; a worker whose check fails never serves and a "
            "restart onto it aborts (default: no check).",
            flag="--health-path", key="health_path", metavar="PATH"),
    Setting("health_host", _host_header, None,
            "Host header of the health check (default: the first server_names entry, else "
            "localhost).", flag="--health-host", key="health_host", metavar="HOST"),
    Setting("health_statuses", _statuses, "200-399",
            "Statuses of a passing health check: codes and ranges, e.g. \"200-299,301\".",
            flag="--health-statuses", key="health_statuses", metavar="LIST"),
    Setting("health_timeout", _seconds, 10.0,
            "Seconds the health check has to answer (counted after the app imported).",
            flag="--health-timeout", key="health_timeout"),
    # Canary: the first new worker of a rolling restart serves beside the old ones first.
    Setting("canary_duration", _seconds_or_off, 0.0,
            "Canary: the first new worker of a rolling restart serves its share beside the "
            "old workers for this many seconds before the rest follow; too many 5xx abort "
            "the restart (0: off).", flag="--canary-duration", key="canary_duration",
            metavar="SECONDS"),
    Setting("canary_min_requests", _non_negative_int, 10,
            "Requests the canary must serve during canary_duration for its error rate to be "
            "judged (fewer: the restart goes on).",
            flag="--canary-min-requests", key="canary_min_requests"),
    Setting("canary_max_error_rate", _fraction, 0.1,
            "Share of the canary's responses (0..1) that may be 5xx; above it the restart "
            "aborts and the canary is retired.",
            flag="--canary-max-error-rate", key="canary_max_error_rate", metavar="RATE"),
    # Limits: a worker past one is replaced (new one ready first, then the old one retires).
    Setting("max_requests", _non_negative_int, 0,
            "Replace a worker after it served this many requests (0: never).",
            flag="--max-requests", key="max_requests"),
    Setting("max_requests_jitter", _non_negative_int, 0,
            "Add a random 0..N to max_requests for each worker, so they are not all replaced "
            "at once.", flag="--max-requests-jitter", key="max_requests_jitter"),
    Setting("memory_limit", _non_negative_int, 0,
            "Replace a worker whose own memory (USS: the pages no other process shares, "
            "so not what it shares with its preloader) grows past this many MiB "
            "(0: no limit).",
            flag="--memory-limit", key="memory_limit", metavar="MIB"),
    Setting("max_request_time", _seconds_or_off, 0.0,
            "Seconds a request may run; past it the client gets 504, the request's stack is "
            "logged and the worker is replaced (0: no limit). Pure-Python CPU work is "
            "interrupted too (a CPU-time timer, SIGVTALRM, in the worker).",
            flag="--max-request-time", key="max_request_time", metavar="SECONDS"),
    Setting("max_concurrent_requests", _non_negative_int, 0,
            "Requests one worker serves at once; more are answered 503 at once, with "
            "Retry-After (0: no limit).",
            flag="--max-concurrent-requests", key="max_concurrent_requests"),
    Setting("max_workers", _non_negative_int, 0,
            "Grow the pool up to this many workers while all are busy; --workers is then the "
            "minimum (0: a fixed pool of --workers).", flag="--max-workers", key="max_workers"),
    Setting("idle_timeout", _seconds, 60.0,
            "Seconds a worker above --workers may stay idle before it is shut down.",
            flag="--idle-timeout", key="idle_timeout"),
    Setting("environment", _environment, "production",
            "development: a request to an app that failed to boot gets an HTML page with the "
            "error; production: a plain 503 (the error goes to the log).",
            flag="--environment", key="environment", metavar="development|production"),
    Setting("max_request_line", _positive_int, 8190, "Longest request line in bytes (414).",
            flag="--max-request-line", key="max_request_line"),
    Setting("max_header_size", _positive_int, 65536,
            "Largest request header section in bytes (431).",
            flag="--max-header-size", key="max_header_size"),
    Setting("max_headers", _positive_int, 100, "Most request header fields (431).",
            flag="--max-headers", key="max_headers"),
    Setting("max_body_size", _non_negative_int, 0, "Largest request body in bytes, 0 = no limit (413).",
            flag="--max-body-size", key="max_body_size"),
    Setting("keepalive_timeout", _seconds, 20.0, "Seconds an idle keep-alive connection is kept.",
            flag="--keepalive-timeout", key="keepalive_timeout"),
    Setting("header_timeout", _seconds, 30.0, "Seconds a client has to send the request headers.",
            flag="--header-timeout", key="header_timeout"),
    Setting("worker_connections", _positive_int, 1000,
            "Most open connections per worker; at the limit a new client makes the worker "
            "close its longest-idle connection (keep-alive, or not a byte sent yet).",
            flag="--worker-connections", key="worker_connections"),
    Setting("client_body_timeout", _seconds, 60.0,
            "Seconds the worker waits for more of a request body (like nginx's); a client "
            "that stalls longer is answered 408 if the response has not started.",
            flag="--client-body-timeout", key="client_body_timeout", metavar="SECONDS"),
    Setting("client_body_min_rate", _non_negative_int, 500,
            "Bytes per second a request body must average, counted over the time spent "
            "waiting for it after a first --client-body-timeout of grace; slower gets 408 "
            "(0: no minimum).",
            flag="--client-body-min-rate", key="client_body_min_rate", metavar="BYTES"),
    Setting("trusted_proxies", _proxy_list, ["127.0.0.0/8", "::1/128", "unix"],
            "Peers whose X-Forwarded-For/-Proto are believed: addresses, CIDR networks, or "
            "'unix' for unix socket peers (repeatable).",
            flag="--trusted-proxy", key="trusted_proxies", multiple=True, metavar="ADDRESS"),
    Setting("server_names", _name_list, [], "Host names the web server routes to the app "
            "(repeatable).", flag="--server-name", key="server_names", multiple=True,
            metavar="HOST"),
    Setting("static_dir", _relative_dir, None,
            "Directory of static files, relative to the app root, served by the web server.",
            flag="--static-dir", key="static_dir", metavar="DIR"),
    Setting("static_url", _url_prefix, "/static/", "URL path where static_dir is served.",
            flag="--static-url", key="static_url", metavar="PATH"),
    Setting("user", _text, None, "Account the app runs as (interpreter check, preloader, "
            "workers) when the master runs as root (default: the owner of the app root; "
            "refused if that is root, unless --allow-root).",
            flag="--user", key="user", metavar="USER"),
    Setting("group", _text, None, "Group the app runs as when the master runs as root "
            "(default: the user's primary group; never root unless --allow-root).",
            flag="--group", key="group", metavar="GROUP"),
    Setting("allow_root", _flag, False,
            "Let the app run as root when the master runs as root and `user` is root or "
            "unset on a root-owned app root (without it railcar refuses to start the app).",
            flag="--allow-root", key="allow_root", is_flag=True),
    Setting("socket_group", _text, None, "Group given the app's unix sockets (mode 0660), "
            "e.g. the web server's (default as root: www-data if it exists).",
            flag="--socket-group", key="socket_group", metavar="GROUP"),
    # --- per server -----------------------------------------------------------------------
    Setting("config", _text, None, "Server config file with [server] and [[apps]] tables.",
            scope="server", flag="--config", metavar="FILE"),
    Setting("admin_socket", _text, None, "Admin socket path (mode 0600) "
            "(default: /run/railcar/admin.sock as root, else /tmp/railcar-UID/admin.sock).",
            scope="server", flag="--admin-socket", key="admin_socket", metavar="PATH"),
    Setting("admin_group", _text, None,
            "Group that may use the admin socket (status, restart...): the socket becomes mode "
            "0660 with that group and its directory group-traversable (default: the master's "
            "account alone, mode 0600).",
            scope="server", flag="--admin-group", key="admin_group", metavar="GROUP"),
    Setting("pid_file", _text, None, "Write the master's pid here.",
            scope="server", flag="--pid-file", key="pid_file", metavar="PATH"),
    Setting("log_file", _text, None, "Server log file (default: stderr).",
            scope="server", flag="--log-file", key="log_file", metavar="PATH"),
    Setting("daemon", _flag, False, "Detach and run in the background.",
            scope="server", flag="--daemon", key="daemon", is_flag=True),
    Setting("graceful_timeout", _seconds, 30.0,
            "Seconds a retiring worker has to finish its requests.",
            scope="server", flag="--graceful-timeout", key="graceful_timeout"),
    Setting("metrics_bind", _tcp_bind, None,
            "Serve Prometheus metrics at http://HOST:PORT/metrics (default: off).",
            scope="server", flag="--metrics-bind", key="metrics_bind", metavar="HOST:PORT"),
    Setting("run_dir", _text, None, "Directory of the apps' unix sockets: an app of a --config "
            "file without `bind` listens on unix:RUN_DIR/APP.sock "
            "(default: /run/railcar as root, else /tmp/railcar-UID).",
            scope="server", flag="--run-dir", key="run_dir", metavar="DIR"),
)

BY_NAME = {setting.name: setting for setting in SETTINGS}
APP_KEYS = {s.key: s for s in SETTINGS if s.scope == "app" and s.key}
SERVER_KEYS = {s.key: s for s in SETTINGS if s.scope == "server" and s.key}


def default_admin_socket() -> str:
    return _default_admin_socket()


def default_run_dir() -> str:
    return _default_run_dir()


def coerce(setting: Setting, value: Any, where: str) -> Any:
    """Validate one value; a ConfigError names the key and where the value came from."""
    try:
        return setting.type(value)
    except (TypeError, ValueError) as exc:
        label = setting.key or setting.flag or setting.name
        raise ConfigError(f"{where}: {label}: {exc} (got {value!r})") from None


def defaults(scope: str) -> dict[str, Any]:
    return {s.name: s.default for s in SETTINGS if s.scope == scope}
