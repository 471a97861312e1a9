"""The deploy settings: defaults in one place, validated once, errors naming key and file.

Users set them under the `railcar:` key of Fabric's config (fabric.yaml next to the fabfile,
~/.fabric.yaml, `-f FILE`, or FABRIC_RAILCAR_* environment variables). `per_host` overrides
any key for one host, by the name the host was given (`-H` or `hosts`).
Pure functions of the config: no connection, no file outside the source is touched.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable

from ..settings import APP_NAME  # the same names as the server takes

DEFAULTS: dict[str, Any] = {
    "app": None,                  # app name: service name, admin socket, status
    "source": ".",                # a local git repo (archive of `ref`) or a plain directory
    "ref": "HEAD",                # git ref to deploy; ignored for a plain directory
    "deploy_to": None,            # default /srv/APP
    "hosts": [],                  # used when no -H is given
    "per_host": {},               # {host: {key: value}}: overrides for one host
    "keep_releases": 5,           # good releases kept by cleanup
    "shared_dirs": [],            # linked from shared/ into every release
    "shared_files": [],           # must exist in shared/ before a deploy
    "requirements": "requirements.txt",  # relative to the release; may be missing
    "python": "python3",          # interpreter on the host for the virtualenvs
    "pip_args": [],               # extra `pip install` arguments (e.g. an index URL)
    "wheel": None,                # railcar wheel to upload (default: built locally)
    "wheelhouse": None,           # local dir of extra wheels uploaded for pip --find-links
    "workers": 2,
    "bind": [],                   # extra binds; unix:DEPLOY_TO/run/app.sock is always there
    "env": {},                    # environment of the app and of the hooks (in the env file)
    "secrets": [],                # names of variables of the deploying machine's environment
                                  # added to the env file at deploy time (never on a command line)
    "user": None,                 # the app account (default: the app's name); never root
    "deploy_user": None,          # owner of deploy_to, the SSH user of deploy (default: setup's)
    "known_hosts": None,          # a project known_hosts file, besides ~/.ssh/known_hosts
    "trust_new_hosts": False,     # trust-on-first-use: record an unknown host's key (accept-new)
    "hooks": [],                  # run in the release before the swap: "cmd" or [argv]
    "health_path": "/",
    "health_timeout": 30,         # seconds for the health check to get a 2xx/3xx
    "lock_timeout": 3600,         # seconds after which a lock held from another machine is stale
    "canary_hosts": 0,            # publish to the first N hosts, watch them, then the rest
    "canary_watch": 60,           # seconds the canary hosts are watched before the rest publish
    "batch_size": "100%",         # hosts that publish at once (after the canaries): N or "P%"
    "failure_budget": 0,          # hosts that may fail (each restores itself): N or "P%"
    "on_batch_failure": "rollback",  # over budget: hosts already on the release roll back, or keep
    "systemd": "auto",            # auto: a unit when systemd runs on the host; else a daemon
    "nginx": {},                  # setup/deploy install the app's nginx site: see NGINX_DEFAULTS
}

# railcar.nginx: off unless enabled. The site is rendered on the host by `railcar config nginx`
# from the server's own command line, written to SITES_DIR/railcar-APP.conf when it changed,
# checked with test_command (a failure puts the old site back), then nginx is reloaded.
NGINX_DEFAULTS: dict[str, Any] = {
    "enabled": False,
    "sites_dir": "/etc/nginx/conf.d",         # a directory nginx.conf includes (*.conf)
    "server_names": [],                       # server_name (default: "_", any host)
    "listen": "80",                           # nginx `listen` value
    "test_command": ["nginx", "-t"],          # "cmd" or [argv]: checks the whole config
    "reload_command": ["systemctl", "reload", "nginx"],
    "user": "www-data",                       # nginx's workers' account: joins the app's group
}



class ConfigError(Exception):
    """A deploy setting is wrong; the message names the key and where it was set."""


def _name(value):
    if not isinstance(value, str) or not APP_NAME.fullmatch(value):
        raise ValueError("expected a name of letters, digits, '.', '_' or '-'")
    return value


def _text(value):
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    return value


def _abs_path(value):
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("expected an absolute path on the host")
    return value.rstrip("/") or "/"


def _deploy_root(value):
    """DEPLOY_TO: absolute, normalized, at least two components (cleanup removes paths under
    it, so `/` or `/srv` would put the whole host or every app in reach)."""
    path = _abs_path(value)
    parts = [part for part in path.split("/") if part]
    if any(part in (".", "..") for part in parts) or "//" in value.rstrip("/"):
        raise ValueError("expected a normalized path (no '.', '..' or '//')")
    if len(parts) < 2:
        raise ValueError("refused: a deploy root needs at least two path components "
                         "(e.g. /srv/APP), since cleanup removes paths under it")
    return path


def _count_or_percent(minimum):
    """A number of hosts (N >= minimum) or a share of them ("P%", 0 < P <= 100)."""
    whole = _int(minimum)

    def check(value):
        if isinstance(value, str) and value.strip().endswith("%"):
            try:
                share = float(value.strip()[:-1])
            except ValueError:
                raise ValueError("expected a number of hosts or a percentage such as 25%") from None
            if not (0 <= share <= 100) or (minimum > 0 and share == 0):
                bounds = "(0, 100]" if minimum else "[0, 100]"
                raise ValueError(f"a percentage must lie in {bounds}")
            return f"{share:g}%"
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value.strip())
        try:
            return whole(value)
        except ValueError as exc:
            raise ValueError(f"{exc}: a number of hosts or a percentage such as 25%") from None
    return check


def resolve_hosts(value: int | str, total: int, minimum: int) -> int:
    """A count-or-percent setting as a number of hosts out of `total` (percentages round
    up for batches, down for budgets: minimum 1 means a batch, 0 a budget)."""
    if isinstance(value, int):
        return value
    share = float(value[:-1]) * total / 100
    count = int(share) if minimum == 0 else -int(-share // 1)
    return max(minimum, count)


def _choice(*allowed):
    def check(value):
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value
    return check


def _optional(check):
    return lambda value: None if value is None else check(value)


def _int(minimum):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ValueError("expected a whole number")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return int(value)
    return check


def _str_list(value):
    if isinstance(value, str):
        value = [item for item in value.split(",") if item]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of strings")
    return list(value)


def _relative_list(value):
    items = _str_list(value)
    for item in items:
        if item.startswith("/") or ".." in item.split("/"):
            raise ValueError(f"{item!r} must be a path relative to the release")
    return items


def _mapping(value):
    if not isinstance(value, dict):
        raise ValueError("expected a mapping")
    return {str(k): str(v) for k, v in value.items()}


ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ACCOUNT = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")


def _account(value):
    if not isinstance(value, str) or not ACCOUNT.match(value):
        raise ValueError("expected an account name (lower-case letters, digits, '_', '.', '-'; "
                         "at most 32)")
    return value


def _app_account(value):
    value = _account(value)
    if value == "root":
        raise ValueError("the app never runs as root: name an unprivileged account")
    return value


def _env(value):
    """env: names are shell variable names; values one line (the env file holds one per line).
    A bad value is named by its variable only, never shown."""
    env = _mapping(value)
    for name, item in env.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a variable name (letters, digits, '_')")
        if "\n" in item or "\r" in item or "\0" in item:
            raise ValueError(f"the value of {name} spans lines: the env file holds one per line")
    return env


def _secrets(value):
    names = _str_list(value)
    for name in names:
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a variable name (letters, digits, '_')")
    return names


def _hooks(value):
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of commands (strings or lists of arguments)")
    hooks = []
    for hook in value:
        if isinstance(hook, str) and hook.strip():
            hooks.append(["sh", "-c", hook])
        elif isinstance(hook, (list, tuple)) and hook and all(isinstance(a, str) for a in hook):
            hooks.append(list(hook))
        else:
            raise ValueError(f"hook {hook!r} is not a command string or a list of arguments")
    return hooks


def _systemd(value):
    if value not in ("auto", True, False):
        raise ValueError("expected auto, true or false")
    return value


class SubkeyError(ValueError):
    """A key inside a mapping setting is wrong: reported as railcar.SETTING.KEY."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def _command(value):
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(a, str) for a in value):
        return shlex.join(value)
    raise ValueError("expected a command string or a list of arguments")


def _bool(value):
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


NGINX_CHECKS: dict[str, Callable[[Any], Any]] = {
    "enabled": _bool, "sites_dir": _abs_path, "server_names": _str_list, "listen": _text,
    "test_command": _command, "reload_command": _command, "user": _optional(_account),
}
assert set(NGINX_CHECKS) == set(NGINX_DEFAULTS)


def _nginx(value):
    """The nginx settings, defaults filled in; commands become shell command lines."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping with keys {', '.join(NGINX_DEFAULTS)}")
    unknown = sorted(set(value) - set(NGINX_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(NGINX_DEFAULTS)})")
    out = {}
    for key, check in NGINX_CHECKS.items():
        raw = value.get(key, NGINX_DEFAULTS[key])
        try:
            out[key] = check(raw)
        except (TypeError, ValueError) as exc:
            raise SubkeyError(key, f"{exc} (got {raw!r})") from None
    for name in out["server_names"]:
        if not re.fullmatch(r"[A-Za-z0-9*_.~-]+", name):
            raise SubkeyError("server_names", f"{name!r} is not a host name")
    if not re.fullmatch(r"[A-Za-z0-9_.:\[\]]+", out["listen"]):
        raise SubkeyError("listen", f"{out['listen']!r} is not an nginx listen address")
    return out


def _per_host(value):
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError("expected a mapping of host name to a mapping of settings")
    return value


CHECKS: dict[str, Callable[[Any], Any]] = {
    "app": _optional(_name), "source": _text, "ref": _text, "deploy_to": _optional(_deploy_root),
    "hosts": _str_list, "per_host": _per_host, "keep_releases": _int(1),
    "shared_dirs": _relative_list, "shared_files": _relative_list,
    "requirements": _text, "python": _text, "pip_args": _str_list,
    "wheel": _optional(_text), "wheelhouse": _optional(_text), "workers": _int(1),
    "bind": _str_list, "env": _env, "hooks": _hooks, "health_path": _text,
    "health_timeout": _int(1), "lock_timeout": _int(1), "systemd": _systemd,
    "nginx": _nginx, "secrets": _secrets, "user": _optional(_app_account),
    "deploy_user": _optional(_account), "known_hosts": _optional(_text),
    "trust_new_hosts": _bool,
    "canary_hosts": _int(0), "canary_watch": _int(0),
    "batch_size": _count_or_percent(1), "failure_budget": _count_or_percent(0),
    "on_batch_failure": _choice("rollback", "keep"),
}
assert set(CHECKS) == set(DEFAULTS)


@dataclass(frozen=True)
class DeployConfig:
    """The validated settings for one host."""

    host: str | None
    app: str
    source: str
    ref: str
    deploy_to: str
    keep_releases: int
    shared_dirs: list[str]
    shared_files: list[str]
    requirements: str
    python: str
    pip_args: list[str]
    wheel: str | None
    wheelhouse: str | None
    workers: int
    bind: list[str]
    env: dict[str, str]
    hooks: list[list[str]]
    health_path: str
    health_timeout: int
    lock_timeout: int
    systemd: Any
    nginx: dict[str, Any] = field(default_factory=lambda: _nginx({}))
    canary_hosts: int = 0
    canary_watch: int = 60
    batch_size: int | str = "100%"
    failure_budget: int | str = 0
    on_batch_failure: str = "rollback"
    hosts: list[str] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)
    user: str = ""                  # the app account (validated: never root)
    deploy_user: str | None = None  # None: the SSH user of `fab setup`
    known_hosts: str | None = None  # absolute path of the project known_hosts file
    trust_new_hosts: bool = False


def where_set(config, key: str) -> str:
    """Which source gave `railcar.<key>` its value: a file, the environment, or defaults."""
    for level in ("runtime", "project", "user", "system"):
        data = getattr(config, f"_{level}", None) or {}
        if key in (data.get("railcar") or {}):
            return str(getattr(config, f"_{level}_path", None) or f"{level} config file")
    env = getattr(config, "_env", None) or {}
    if key in (env.get("railcar") or {}):
        return f"environment variable FABRIC_RAILCAR_{key.upper()}"
    files = [str(getattr(config, f"_{level}_path", None)) for level in ("runtime", "project")
             if getattr(config, f"_{level}_found", None)]
    return " / ".join(files) or "fabric config (no fabric.yaml found)"


def _plain(value: Any) -> Any:
    """Config values as plain dicts and lists (Fabric hands out DataProxy objects)."""
    if hasattr(value, "items") and not isinstance(value, str):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def _raw(config) -> dict[str, Any]:
    try:
        section = config["railcar"]
    except KeyError:
        section = {}
    return _plain(section) if section else {}


def validate(raw: dict[str, Any], where: Callable[[str], str], host: str | None) -> DeployConfig:
    """Check every key of one host's settings; raise ConfigError naming the key and source."""
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{where(unknown[0])}: railcar.{unknown[0]}: unknown setting "
                          f"(known: {', '.join(sorted(DEFAULTS))})")
    values = dict(DEFAULTS)
    values.update(raw)
    out = {}
    for key, check in CHECKS.items():
        try:
            out[key] = check(values[key])
        except SubkeyError as exc:
            raise ConfigError(f"{where(key)}: railcar.{key}.{exc.key}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where(key)}: railcar.{key}: {exc} (got {values[key]!r})") from None
    if out["app"] is None:
        raise ConfigError(f"{where('app')}: railcar.app: required (the app's name)")
    out["deploy_to"] = out["deploy_to"] or f"/srv/{out['app']}"
    if out["user"] is None:
        try:
            out["user"] = _app_account(out["app"].lower())
        except ValueError as exc:
            raise ConfigError(f"{where('user')}: railcar.user: the default (the app's name "
                              f"{out['app']!r}) is no account name: {exc}; set railcar.user") \
                from None
    if out["known_hosts"] is not None:
        out["known_hosts"] = _relative_to(where("known_hosts"), out["known_hosts"])
    out["source"] = os.path.abspath(os.path.expanduser(out["source"]))
    if not os.path.isdir(out["source"]):
        raise ConfigError(f"{where('source')}: railcar.source: {out['source']} is not a directory")
    del out["per_host"]
    return DeployConfig(host=host, **out)


def _relative_to(origin: str, path: str) -> str:
    """A path from a config file, relative to that file's directory (else to the cwd)."""
    path = os.path.expanduser(path)
    if not os.path.isabs(path) and os.path.isfile(origin.split(" (")[0]):
        path = os.path.join(os.path.dirname(origin.split(" (")[0]), path)
    return os.path.abspath(path)


def env_from_machine(config: DeployConfig, environ=None) -> dict[str, str]:
    """The app's environment: `env`, then each `secrets` name from this machine's
    environment. Raises ConfigError naming a missing or multi-line secret (never its value)."""
    environ = os.environ if environ is None else environ
    out = dict(config.env)
    missing = [name for name in config.secrets if name not in environ]
    if missing:
        raise ConfigError(f"railcar.secrets: {', '.join(missing)} not set in this machine's "
                          "environment (export it before running fab)")
    for name in config.secrets:
        value = environ[name]
        if "\n" in value or "\r" in value or "\0" in value:
            raise ConfigError(f"railcar.secrets: the value of {name} spans lines: the env file "
                              "holds one per line")
        out[name] = value
    return out


def _per_host_entry(per_host: dict, host: str):
    """per_host's entry for `host` as given (-H user@name:port), else for its bare name."""
    if host in per_host:
        return host
    bare = host.rsplit("@", 1)[-1].split(":")[0]
    return bare if bare in per_host else None


def load(config, host: str | None = None) -> DeployConfig:
    """The settings of `host` (None: no host given) from a Fabric/invoke config object."""
    raw = _raw(config)
    per_host = raw.get("per_host") or {}
    entry = _per_host_entry(per_host, host) if host is not None and isinstance(per_host, dict) \
        else None
    if entry is not None and isinstance(per_host.get(entry), dict):
        override = per_host[entry]
        raw = {**raw, **override}

        def where(key: str) -> str:
            origin = where_set(config, "per_host" if key in override else key)
            return f"{origin} (per_host {host})" if key in override else origin
    else:
        def where(key: str) -> str:
            return where_set(config, key)
    return validate(raw, where, host)
