"""The deploy's settings: the "deploy" and "nginx" rows of railcar.settings, read from
Fabric's config and validated once into a DeployConfig; errors name the key and the file.

Users set them under the `railcar:` key of Fabric's config (fabric.yaml next to the fabfile,
~/.fabric.yaml, `-f FILE`, or FABRIC_RAILCAR_* environment variables). `per_host` overrides
any key for one host, by the name the host was given (`-H` or `hosts`).
Pure functions of the config: no connection, no file outside the source is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from ..convert import app_account
from ..settings import DEPLOY_KEYS, ConfigError, SubkeyError, defaults, view

__all__ = ["DEFAULTS", "NGINX_DEFAULTS", "ConfigError", "DeployConfig", "env_from_machine",
           "load", "resolve_hosts", "validate", "where_set"]

DEFAULTS: dict[str, Any] = defaults("deploy")          # what `ns.configure` gives Fabric
NGINX_DEFAULTS: dict[str, Any] = defaults("nginx")


def resolve_hosts(value: int | str, total: int, minimum: int) -> int:
    """A count-or-percent setting as a number of hosts out of `total` (percentages round
    up for batches, down for budgets: minimum 1 means a batch, 0 a budget)."""
    if isinstance(value, int):
        return value
    share = float(value[:-1]) * total / 100
    count = int(share) if minimum == 0 else -int(-share // 1)
    return max(minimum, count)


@dataclass(frozen=True)
@view("deploy", "host", without=("per_host",))
class DeployConfig:
    """The validated settings for one host (per_host applied): the "deploy" rows less
    per_host, plus the host's name as given (None: no host)."""

    host: str | None
    app: str
    source: str                     # absolute
    ref: str
    deploy_to: str                  # default /srv/APP
    hosts: list[str]
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
    secrets: list[str]
    user: str                       # the app account (validated: never root)
    deploy_user: str | None         # None: the SSH user of `fab setup`
    known_hosts: str | None         # absolute path of the project known_hosts file
    trust_new_hosts: bool
    hooks: list[list[str]]          # argv lists
    health_path: str
    health_timeout: int
    lock_timeout: int
    canary_hosts: int
    canary_watch: int
    batch_size: int | str           # N, or "P%"
    failure_budget: int | str
    on_batch_failure: str
    systemd: Any                    # "auto", True or False
    nginx: dict[str, Any]           # the "nginx" rows, converted (commands as command lines)


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
    unknown = sorted(set(raw) - set(DEPLOY_KEYS))
    if unknown:
        raise ConfigError(f"{where(unknown[0])}: railcar.{unknown[0]}: unknown setting "
                          f"(known: {', '.join(sorted(DEPLOY_KEYS))})")
    values = defaults("deploy") | raw
    out = {}
    for key, setting in DEPLOY_KEYS.items():
        try:
            out[key] = setting.convert(values[key])
        except SubkeyError as exc:
            raise ConfigError(f"{where(key)}: railcar.{key}.{exc.key}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where(key)}: railcar.{key}: {exc} (got {values[key]!r})") from None
    if out["app"] is None:
        raise ConfigError(f"{where('app')}: railcar.app: required (the app's name)")
    nginx = out["nginx"]
    if bool(nginx["ssl_certificate"]) != bool(nginx["ssl_certificate_key"]):
        missing = "ssl_certificate_key" if nginx["ssl_certificate"] else "ssl_certificate"
        raise ConfigError(f"{where('nginx')}: railcar.nginx.{missing}: needed too: nginx "
                          "serves TLS with a certificate and its key")
    out["deploy_to"] = out["deploy_to"] or f"/srv/{out['app']}"
    if out["user"] is None:
        try:
            out["user"] = app_account(out["app"].lower())
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
