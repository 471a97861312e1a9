"""Build the server's configuration from CLI values and railcar.toml files.

Precedence, highest first: CLI flags, the config file, the defaults of settings.SETTINGS.
Two shapes of file:
- APP_DIR/railcar.toml: an optional [app] table (and optional [server] table) for the app
  given on the command line.
- --config FILE: a [server] table and one [[apps]] table per app (each with `root`).
Every error is a ConfigError naming the file, the app and the key. Nothing here touches a
socket or a process: validation happens in full before anything starts.

Accounts (who an app runs as under a root master) are resolved by railcar.accounts. The app
dir's own railcar.toml (part of a release) cannot set them, the interpreter or root's files
for a root master (ROOT_ONLY_KEYS): only the command line and a --config file can.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from . import accounts, envfile, tls
from .accounts import Account
from .settings import (APP_KEYS, APP_NAME, APP_SECTIONS, BY_NAME, SERVER_KEYS, ConfigError,
                       coerce, default_admin_socket, default_run_dir, defaults, names, rows)
from .views import Supervision

DEFAULT_PORT = 8000
HEALTH_MARGIN = 1.0   # seconds the master waits past health_timeout before killing a worker


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
    access_log_format: str = "text"
    tls: dict[str, str] | None = None   # {"certfile", "keyfile"} (absolute); None: plain HTTP
    limits: dict[str, Any] = field(default_factory=dict)   # section "limits": views.Limits
    supervision: Supervision = field(default_factory=Supervision)
    server_names: list[str] = field(default_factory=list)
    static_dir: str | None = None
    static_url: str = "/static/"
    env_file: str | None = None         # absolute; read at each spawn batch (envfile.read)
    run_as: "Account | None" = None     # set only when the master runs as root
    socket_group: int | None = None     # gid given to the app's unix sockets
    health: dict[str, Any] | None = None    # see health_check(); None: no health check
    canary: dict[str, Any] = field(default_factory=dict)   # see CANARY_NAMES
    hooks_module: str | None = None     # the app's lifecycle hooks (railcar.hooks)
    gc_freeze: bool = True              # the preloader freezes the GC before forking
    boot_nice: int = 0                  # added to a booting process's nice value (priority.py)
    event_loop: str = "auto"            # the workers' event-loop backend (eventloop.py)

    @property
    def health_timeout(self) -> float:
        """Seconds the health check has (0: no health check)."""
        return self.health["timeout"] if self.health else 0.0

    @property
    def ready_timeout(self) -> float:
        """Longest a new worker may take to be ready: the import, then its health check
        (and the margin the master grants past it)."""
        return self.boot_timeout + (self.health_timeout + HEALTH_MARGIN if self.health else 0)

    def check_tls(self) -> None:
        """The one check of the certificate and key, as they are now (the master runs it at
        start and before each spawn batch): they load and match, and, under a root master,
        the app's account (`run_as`), which the workers read them as, can read them.
        ConfigError naming the app, the setting and the file (and the account) otherwise."""
        if not self.tls:
            return
        try:
            tls.server_context(self.tls["certfile"], self.tls["keyfile"])
        except tls.TLSError as exc:
            raise ConfigError(f"app {self.name!r}: {exc}") from None
        if self.run_as is None:
            return
        unreadable = self.run_as.unreadable(list(dict.fromkeys(self.tls.values())))
        for key in ("certfile", "keyfile"):
            if self.tls[key] in unreadable:
                account = self.run_as.user
                raise ConfigError(
                    f"app {self.name!r}: {key} {self.tls[key]}: cannot be read by the app's "
                    f"account {account}, which the workers read it as: give {account} read "
                    f"access (e.g. group {self.run_as.group}, mode 0640)")

    def environment(self) -> dict[str, str]:
        """What the app's processes get on top of the master's environment: `env`, then the
        env file's variables (read now, so a restart sees the file as it is now)."""
        env = dict(self.env)
        if self.env_file:
            env.update(envfile.read(self.env_file))
        return env


@dataclass
class ServerConfig:
    admin_socket: str
    pid_file: str | None
    log_file: str | None
    daemon: bool
    graceful_timeout: float
    apps: list[AppConfig]
    metrics_bind: str | None = None
    run_dir: str = field(default_factory=default_run_dir)
    config_file: str | None = None      # the --config file, if the apps came from one
    admin_group: int | None = None      # gid that may use the admin socket (mode 0660)


CANARY_NAMES = ("canary_duration", "canary_min_requests", "canary_max_error_rate")


def health_check(values: dict[str, Any]) -> dict[str, Any] | None:
    """What a new worker checks before it reports ready (railcar.health), or None."""
    if not values.get("health_path"):
        return None
    plain = [n for n in values["server_names"] if not n.startswith((".", "~")) and "*" not in n]
    host = values.get("health_host") or (plain or ["localhost"])[0]
    return {"path": values["health_path"], "host": host,
            "statuses": values["health_statuses"], "timeout": values["health_timeout"]}


def read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _table(data: dict[str, Any], keys: dict, where: str) -> dict[str, Any]:
    """Validate a TOML table against the settings it may set (`keys`: key -> row)."""
    values = {}
    for key, raw in data.items():
        setting = keys.get(key)
        if setting is None:
            known = ", ".join(sorted(keys))
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
        values[setting.name] = coerce(setting, raw, where)
    return values


def _cli_values(cli: dict[str, Any], *sections: str) -> dict[str, Any]:
    """The settings of `sections` that were given on the command line, validated."""
    out = {}
    for setting in rows(*sections):
        value = cli.get(setting.name)
        if value is None or value in ((), []):
            continue
        if isinstance(value, tuple):
            value = list(value)
        out[setting.name] = coerce(setting, value, f"option {setting.flag}")
    return out


def _make_app(values: dict[str, Any], where: str, base_dir: str,
              default_bind: str | None = None, starting: bool = True) -> AppConfig:
    """`default_bind` (may contain {name}) is used when the app has neither bind nor port.
    `starting` False (rendering): no account is resolved and the env file is not read."""
    root = values.get("root")
    if not root:
        raise ConfigError(f"{where}: root: required (the app's directory)")
    root = os.path.abspath(os.path.join(base_dir, os.path.expanduser(root)))
    if not os.path.isdir(root):
        raise ConfigError(f"{where}: root: {root} is not a directory")
    name = values.get("name") or default_name(root)
    binds = list(values["bind"])
    if values.get("port"):
        binds.append(f"{values['address']}:{values['port']}")
    if not binds:
        binds.append(default_bind.format(name=name) if default_bind
                     else f"{values['address']}:{DEFAULT_PORT}")
    python = values.get("python")
    if python:
        python = os.path.abspath(os.path.join(base_dir, os.path.expanduser(python)))
    env_file = values.get("env_file")
    if env_file:
        env_file = os.path.abspath(os.path.join(base_dir, os.path.expanduser(env_file)))
        if starting:
            envfile.read(env_file)  # refuse a missing or malformed file before anything runs
    app = AppConfig(
        name=name,
        root=root,
        module=values.get("module"),
        binds=binds,
        workers=values["workers"],
        python=python,
        env=dict(values["env"]),
        env_file=env_file,
        access_log=values.get("access_log"),
        access_log_format=values["access_log_format"],
        tls=_tls_files(values, where, base_dir),
        boot_timeout=values["boot_timeout"],
        limits={name: values[name] for name in names("limits")},
        supervision=Supervision.from_values(values),
        server_names=list(values["server_names"]),
        static_dir=values.get("static_dir"),
        static_url=values["static_url"],
        run_as=(accounts.app_account(values, root, where) if starting and os.getuid() == 0
                else None),
        socket_group=accounts.socket_group(values, where),
        health=health_check(values),
        canary={name: values[name] for name in CANARY_NAMES},
        hooks_module=values.get("hooks_module"),
        gc_freeze=values["gc_freeze"],
        boot_nice=values["boot_nice"],
        event_loop=values["event_loop"],
    )
    if starting:
        app.check_tls()
    return app


def _tls_files(values: dict[str, Any], where: str, base_dir: str) -> dict[str, str] | None:
    """certfile/keyfile as absolute paths (AppConfig.check_tls checks the files)."""
    certfile, keyfile = values.get("certfile"), values.get("keyfile")
    if not certfile:
        if keyfile:
            raise ConfigError(f"{where}: keyfile: given without certfile (--certfile)")
        return None
    return {key: os.path.abspath(os.path.join(base_dir, os.path.expanduser(path)))
            for key, path in (("certfile", certfile), ("keyfile", keyfile or certfile))}


def default_name(root: str) -> str:
    """An app's name from its directory: characters a name cannot hold become '-'."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(root.rstrip("/")))
    name = name.lstrip("._-")[:64]
    return name if APP_NAME.fullmatch(name) else "app"


# What the app dir's own railcar.toml (part of a release, written by whoever deploys) may not
# set for a master running as root: who the app runs as, which interpreter runs as that
# account, files root reads or writes for it, and who may drive the master.
ROOT_ONLY_KEYS = ("user", "group", "allow_root", "python", "env_file", "socket_group",
                  "certfile", "keyfile", "admin_socket", "admin_group", "pid_file", "log_file",
                  "run_dir")


def _refuse_release_choices(table: dict[str, Any], where: str) -> None:
    for name in ROOT_ONLY_KEYS:
        if name in table:
            setting = BY_NAME[name]
            raise ConfigError(
                f"{where}: {setting.key}: a release's railcar.toml cannot set this for a "
                f"master running as root; give {setting.flag} on the command line, or use a "
                "server config (--config FILE) that root controls")


def _server(values: dict[str, Any], apps: list[AppConfig], where: str = "apps",
            config_file: str | None = None) -> ServerConfig:
    for key, lists in (("name", [[app.name] for app in apps]),
                       ("bind", [app.binds for app in apps]),
                       ("server_names", [app.server_names for app in apps])):
        seen: dict[str, str] = {}
        for app, items in zip(apps, lists):
            for item in items:
                if item in seen:
                    raise ConfigError(f"{where}: {key}: {item!r} is used by app {seen[item]!r} "
                                      f"and app {app.name!r}")
                seen[item] = app.name
    return ServerConfig(
        admin_socket=os.path.abspath(values.get("admin_socket") or default_admin_socket()),
        pid_file=values.get("pid_file") and os.path.abspath(values["pid_file"]),
        log_file=values.get("log_file") and os.path.abspath(values["log_file"]),
        daemon=values["daemon"],
        graceful_timeout=values["graceful_timeout"],
        apps=apps,
        metrics_bind=values.get("metrics_bind"),
        run_dir=os.path.abspath(values.get("run_dir") or default_run_dir()),
        config_file=config_file,
        admin_group=(accounts.group_id(values["admin_group"], f"{config_file} [server]"
                                       if config_file else "command line", "admin_group")
                     if values.get("admin_group") else None),
    )


def load(cli: dict[str, Any], app_dir: str | None, starting: bool = True) -> ServerConfig:
    """Build the ServerConfig for `railcar start` from its CLI values.

    `cli` maps setting names to the values click parsed (None when a flag was not given).
    `starting` False: for `railcar config` (rendering runs nothing of the apps), without the
    checks of what the apps would run as (accounts, env file, a release's root-only keys).
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
        run_dir = os.path.abspath(os.path.join(
            base_dir, server_values.get("run_dir") or default_run_dir()))
        server_values["run_dir"] = run_dir
        apps = []
        for index, table in enumerate(tables):
            where = f"{config_file} [[apps]] #{index + 1}"
            if not isinstance(table, dict):
                raise ConfigError(f"{where}: expected a table")
            if isinstance(table.get("name"), str):
                name = table["name"]
                where += f" ({name})" if APP_NAME.fullmatch(name) else f" ({name!r})"
            values = defaults(*APP_SECTIONS) | _table(table, APP_KEYS, where)
            apps.append(_make_app(values, where, base_dir, default_bind=os.path.join(
                f"unix:{run_dir}", "{name}.sock"), starting=starting))
        return _server(server_values, apps, f"{config_file} [[apps]]",
                       os.path.abspath(config_file))

    app_dir = os.path.abspath(app_dir or ".")
    values = defaults(*APP_SECTIONS)
    app_toml = os.path.join(app_dir, "railcar.toml")
    if os.path.exists(app_toml):
        data = read_toml(app_toml)
        unknown = set(data) - {"server", "app"}
        if unknown:
            raise ConfigError(f"{app_toml}: unknown table(s) {sorted(unknown)} "
                              "(expected [app] and [server])")
        app_table = _table(data.get("app", {}), APP_KEYS, f"{app_toml} [app]")
        server_table = _table(data.get("server", {}), SERVER_KEYS, f"{app_toml} [server]")
        if starting and os.getuid() == 0:
            _refuse_release_choices(app_table, f"{app_toml} [app]")
            _refuse_release_choices(server_table, f"{app_toml} [server]")
        values.update(app_table)
        server_values.update(server_table)
    values.update(_cli_values(cli, *APP_SECTIONS))
    server_values.update(_cli_values(cli, "server"))
    values["root"] = app_dir
    return _server(server_values, [_make_app(values, "command line", os.getcwd(),
                                             starting=starting)])
