"""Build the server's configuration from CLI values and railcar.toml files.

Precedence, highest first: CLI flags, the config file, the defaults of settings.SETTINGS.
Two shapes of file:
- APP_DIR/railcar.toml: an optional [app] table (and optional [server] table) for the app
  given on the command line.
- --config FILE: a [server] table and one [[apps]] table per app (each with `root`).
Every error is a ConfigError naming the file, the app and the key. Nothing here touches a
socket or a process: validation happens in full before anything starts.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from typing import Any

from .settings import APP_KEYS, SERVER_KEYS, SETTINGS, ConfigError, coerce, default_admin_socket, defaults

DEFAULT_PORT = 8000


@dataclass
class AppConfig:
    """One app as the master runs it. `root` is absolute but not resolved (may be a symlink)."""

    name: str
    root: str
    module: str | None
    binds: list[str]
    workers: int
    python: str | None
    env: dict[str, str]
    access_log: str | None
    boot_timeout: float
    limits: dict[str, Any] = field(default_factory=dict)
    supervision: dict[str, Any] = field(default_factory=dict)   # see SUPERVISION_NAMES


@dataclass
class ServerConfig:
    admin_socket: str
    pid_file: str | None
    log_file: str | None
    daemon: bool
    graceful_timeout: float
    apps: list[AppConfig]
    metrics_bind: str | None = None


LIMIT_NAMES = ("max_request_line", "max_header_size", "max_headers", "max_body_size",
               "keepalive_timeout", "header_timeout", "worker_connections")

# Limits the worker enforces per request (http.server.Limits) beyond the protocol's.
REQUEST_LIMIT_NAMES = ("max_concurrent_requests", "max_request_time")
# Settings the master enforces (pool.py, supervision.py).
SUPERVISION_NAMES = ("max_requests", "max_requests_jitter", "memory_limit", "max_workers",
                     "idle_timeout", "environment")


def read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _table(data: dict[str, Any], keys: dict, where: str) -> dict[str, Any]:
    """Validate a TOML table against the settings of one scope."""
    values = {}
    for key, raw in data.items():
        setting = keys.get(key)
        if setting is None:
            known = ", ".join(sorted(keys))
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
        values[setting.name] = coerce(setting, raw, where)
    return values


def _cli_values(cli: dict[str, Any], scope: str) -> dict[str, Any]:
    """The settings of one scope that were given on the command line, validated."""
    out = {}
    for setting in SETTINGS:
        value = cli.get(setting.name)
        if setting.scope != scope or value is None or value in ((), []):
            continue
        if isinstance(value, tuple):
            value = list(value)
        out[setting.name] = coerce(setting, value, f"option {setting.flag}")
    return out


def _make_app(values: dict[str, Any], where: str, base_dir: str) -> AppConfig:
    root = values.get("root")
    if not root:
        raise ConfigError(f"{where}: root: required (the app's directory)")
    root = os.path.abspath(os.path.join(base_dir, os.path.expanduser(root)))
    if not os.path.isdir(root):
        raise ConfigError(f"{where}: root: {root} is not a directory")
    binds = list(values["bind"])
    if values.get("port"):
        binds.append(f"{values['address']}:{values['port']}")
    if not binds:
        binds.append(f"{values['address']}:{DEFAULT_PORT}")
    python = values.get("python")
    if python:
        python = os.path.abspath(os.path.join(base_dir, os.path.expanduser(python)))
    return AppConfig(
        name=values.get("name") or os.path.basename(root.rstrip("/")) or "app",
        root=root,
        module=values.get("module"),
        binds=binds,
        workers=values["workers"],
        python=python,
        env=dict(values["env"]),
        access_log=values.get("access_log"),
        boot_timeout=values["boot_timeout"],
        limits={name: values[name] for name in LIMIT_NAMES + REQUEST_LIMIT_NAMES},
        supervision={name: values[name] for name in SUPERVISION_NAMES},
    )


def _server(values: dict[str, Any], apps: list[AppConfig]) -> ServerConfig:
    names = [app.name for app in apps]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"apps: name {name!r} is used by more than one app")
    binds = [bind for app in apps for bind in app.binds]
    for bind in binds:
        if binds.count(bind) > 1:
            raise ConfigError(f"apps: bind {bind!r} is used more than once")
    return ServerConfig(
        admin_socket=os.path.abspath(values.get("admin_socket") or default_admin_socket()),
        pid_file=values.get("pid_file") and os.path.abspath(values["pid_file"]),
        log_file=values.get("log_file") and os.path.abspath(values["log_file"]),
        daemon=values["daemon"],
        graceful_timeout=values["graceful_timeout"],
        apps=apps,
        metrics_bind=values.get("metrics_bind"),
    )


def load(cli: dict[str, Any], app_dir: str | None) -> ServerConfig:
    """Build the ServerConfig for `railcar start` from its CLI values.

    `cli` maps setting names to the values click parsed (None when a flag was not given).
    """
    server_values = defaults("server")
    config_file = cli.get("config")
    if config_file and app_dir:
        raise ConfigError("give either APP_DIR or --config, not both")
    if config_file:
        data = read_toml(config_file)
        base_dir = os.path.dirname(os.path.abspath(config_file))
        unknown = set(data) - {"server", "apps"}
        if unknown:
            raise ConfigError(f"{config_file}: unknown table(s) {sorted(unknown)} "
                              "(expected [server] and [[apps]])")
        server_values.update(_table(data.get("server", {}), SERVER_KEYS, f"{config_file} [server]"))
        server_values.update(_cli_values(cli, "server"))
        tables = data.get("apps", [])
        if not isinstance(tables, list) or not tables:
            raise ConfigError(f"{config_file}: no [[apps]] table: at least one app is needed")
        apps = []
        for index, table in enumerate(tables):
            where = f"{config_file} [[apps]] #{index + 1}"
            if isinstance(table, dict) and isinstance(table.get("name"), str):
                where += f" ({table['name']})"
            values = defaults("app") | _table(table, APP_KEYS, where)
            apps.append(_make_app(values, where, base_dir))
        return _server(server_values, apps)

    app_dir = os.path.abspath(app_dir or ".")
    values = defaults("app")
    app_toml = os.path.join(app_dir, "railcar.toml")
    if os.path.exists(app_toml):
        data = read_toml(app_toml)
        unknown = set(data) - {"server", "app"}
        if unknown:
            raise ConfigError(f"{app_toml}: unknown table(s) {sorted(unknown)} "
                              "(expected [app] and [server])")
        values.update(_table(data.get("app", {}), APP_KEYS, f"{app_toml} [app]"))
        server_values.update(_table(data.get("server", {}), SERVER_KEYS, f"{app_toml} [server]"))
    values.update(_cli_values(cli, "app"))
    server_values.update(_cli_values(cli, "server"))
    values["root"] = app_dir
    return _server(server_values, [_make_app(values, "command line", os.getcwd())])
