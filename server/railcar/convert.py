"""The converters of the settings table (railcar.settings): one per kind of value.

A converter takes a raw value (from a CLI flag, a railcar.toml, a fabric.yaml or the
environment) and returns it checked and in its one canonical form, or raises ValueError
(TypeError from Python's own conversions counts the same) with a message that says what was
expected. The caller (settings.coerce, the deploy's validate) adds the key and where the value
came from; a message never repeats a value that may be secret (env values, secrets).

Pure functions of their argument, standard library only: a worker imports this too.
"""

from __future__ import annotations

import ipaddress
import math
import re
import shlex
from typing import Any, Callable

# Control characters (C0, DEL) never belong in a setting: a newline in a name or path would
# become a line of its own in a rendered nginx, Apache or systemd file.
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
APP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# A name nginx's server_name and Apache's ServerName/ServerAlias take unquoted.
HOST_NAME = re.compile(r"[A-Za-z0-9*_.~:\-]{1,253}")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ACCOUNT = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}$")
MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")

Convert = Callable[[Any], Any]


# --- numbers --------------------------------------------------------------------------------

def _number(value: Any, convert, expected: str, out_of_range, message: str):
    """`value` as `convert` (int or float), refused if `out_of_range(number)`.

    A boolean is refused outright: YAML/TOML `true` would otherwise pass as 1. So are NaN and
    the infinities (TOML `nan`/`inf`, YAML `.nan`/`.inf`, the strings "nan" and "inf"): no
    comparison refuses NaN, and an infinite timeout is none.
    """
    if isinstance(value, bool):
        raise ValueError(expected)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{expected}, not {value}")
    number = convert(value)
    if not math.isfinite(number):
        raise ValueError(f"{expected}, not {number}")
    if out_of_range(number):
        raise ValueError(message)
    return number


def positive_int(value: Any) -> int:
    return _number(value, int, "expected a whole number", lambda n: n < 1,
                   "must be at least 1")


def non_negative_int(value: Any) -> int:
    return _number(value, int, "expected a whole number", lambda n: n < 0,
                   "must not be negative")


def seconds(value: Any) -> float:
    return _number(value, float, "expected a number of seconds", lambda n: n <= 0,
                   "must be more than 0 seconds")


def seconds_or_zero(zero: str) -> Convert:
    """Seconds, or 0, which means `zero` (said in the messages: "off", "end them at once")."""
    def check(value: Any) -> float:
        return _number(value, float, f"expected a number of seconds (0: {zero})",
                       lambda n: n < 0, f"must not be negative (0: {zero})")
    check.__name__ = "seconds_or_zero"
    return check


seconds_or_off = seconds_or_zero("off")     # seconds, or 0 to turn the limit off
seconds_or_off.__name__ = "seconds_or_off"


def fraction(value: Any) -> float:
    return _number(value, float, "expected a number from 0 to 1", lambda n: not 0 <= n <= 1,
                   "must be from 0 to 1 (0.05 means 5%)")


def port(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError("expected a port number")
    number = int(value)
    if not 0 < number < 65536:
        raise ValueError("must be a port number from 1 to 65535")
    return number


def nice_increment(value: Any) -> int:
    """How much to add to a nice value: a whole number from 0 to 19."""
    return _number(value, int, "expected a whole number", lambda n: not 0 <= n <= 19,
                   "must be from 0 to 19")


def whole(minimum: int) -> Convert:
    """A whole number of at least `minimum`, given as such (YAML: 3 or 3.0, not "3")."""
    def check(value):
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or int(value) != value:
            raise ValueError("expected a whole number")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return int(value)
    check.__name__ = "whole"
    return check


def count_or_percent(minimum: int) -> Convert:
    """A number of hosts (N >= minimum) or a share of them ("P%", 0 < P <= 100)."""
    count = whole(minimum)

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
            return count(value)
        except ValueError as exc:
            raise ValueError(f"{exc}: a number of hosts or a percentage such as 25%") from None
    return check


# --- words and choices ----------------------------------------------------------------------

def text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("expected a non-empty string")
    if CONTROL.search(value):
        raise ValueError("must not contain control characters (newline, tab, NUL...)")
    return value


def module_name(value: Any) -> str:
    """A dotted Python module name (imported from the release, like the app)."""
    name = text(value)
    if not MODULE.fullmatch(name):
        raise ValueError("expected a Python module name, e.g. myapp.hooks")
    return name


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def either(*allowed: str) -> Convert:
    """One of two words, said as "expected 'a' or 'b'"."""
    def check(value):
        if value not in allowed:
            raise ValueError(" or ".join(f"'{word}'" for word in allowed).join(
                ("expected ", "")))
        return value
    check.__name__ = "either"
    return check


def one_of(*allowed: Any) -> Convert:
    def check(value):
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(map(str, allowed))}")
        return value
    check.__name__ = "one_of"
    return check


def optional(check: Convert) -> Convert:
    """None stays None (the setting is unset); anything else goes through `check`."""
    def convert(value):
        return None if value is None else check(value)
    convert.__name__ = check.__name__
    return convert


def app_name(value: Any) -> str:
    """The app's name: it names its socket, nginx upstream, Apache backend and log lines."""
    name = text(value)
    if not APP_NAME.fullmatch(name):
        raise ValueError("expected 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                         "letter or digit")
    return name


def account(value: Any) -> str:
    if not isinstance(value, str) or not ACCOUNT.match(value):
        raise ValueError("expected an account name (lower-case letters, digits, '_', '.', '-'; "
                         "at most 32)")
    return value


def app_account(value: Any) -> str:
    value = account(value)
    if value == "root":
        raise ValueError("the app never runs as root: name an unprivileged account")
    return value


def systemd(value: Any) -> Any:
    if value not in ("auto", True, False):
        raise ValueError("expected auto, true or false")
    return value


def command(value: Any) -> str:
    """A command as one shell command line: a string as it is, a list of arguments quoted."""
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(a, str) for a in value):
        return shlex.join(value)
    raise ValueError("expected a command string or a list of arguments")


# --- addresses, paths, URLs -----------------------------------------------------------------

def bind(value: Any) -> str:
    """`HOST:PORT`, `[::1]:PORT`, `:PORT` or `unix:PATH`."""
    address = text(value)
    if address.startswith("unix:"):
        if len(address) == len("unix:"):
            raise ValueError("unix: needs a socket path")
        return address
    host, sep, number = address.rpartition(":")
    if not sep or not number.isdigit() or not 0 < int(number) < 65536:
        raise ValueError(f"{address!r} is not HOST:PORT or unix:PATH")
    return address


def tcp_bind(value: Any) -> str:
    address = bind(value)
    if address.startswith("unix:"):
        raise ValueError("expected HOST:PORT")
    return address


def bind_list(value: Any) -> list[str]:
    items = [value] if isinstance(value, str) else list(value)
    return [bind(item) for item in items]


def name_list(value: Any) -> list[str]:
    """Host names for the web server's `server_name`: a string or a list of strings."""
    items = [value] if isinstance(value, str) else list(value)
    for item in items:
        if not isinstance(item, str) or not HOST_NAME.fullmatch(item):
            raise ValueError(f"{item!r} is not a host name (letters, digits, '.', '-', '_', "
                             "a '*' wildcard, ':PORT')")
    return items


def relative_dir(value: Any) -> str:
    """A directory inside the release (the web server reaches it through `current`)."""
    path = text(value)
    if path.startswith("/") or ".." in path.split("/") or any(c.isspace() for c in path):
        raise ValueError(f"{path!r} must be relative to the app root, without '..' or spaces")
    return path.rstrip("/") or "."


def url_prefix(value: Any) -> str:
    prefix = text(value)
    if not prefix.startswith("/") or any(c.isspace() or c in ";{}\"'" for c in prefix):
        raise ValueError(f"{prefix!r} is not a URL path starting with /")
    return prefix.rstrip("/") + "/"


def url_path(value: Any) -> str:
    """A request target in origin form: /path, optionally with ?query."""
    target = text(value)
    if not target.startswith("/") or any(c.isspace() or ord(c) < 32 or ord(c) == 127
                                         for c in target):
        raise ValueError(f"{target!r} is not a URL path starting with / (no spaces)")
    return target


def host_header(value: Any) -> str:
    host = text(value)
    if any(c.isspace() or ord(c) < 32 or ord(c) == 127 or c in "/\\@" for c in host):
        raise ValueError(f"{host!r} is not a host name (HOST or HOST:PORT)")
    return host


def proxy_list(value: Any) -> list[str]:
    """Addresses or CIDR networks, and "unix" for peers on a unix socket."""
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if item == "unix":
            out.append(item)
            continue
        try:
            out.append(str(ipaddress.ip_network(text(item), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address, a CIDR network or 'unix'") from None
    return out


def abs_path(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise ValueError("expected an absolute path on the host")
    return value.rstrip("/") or "/"


def deploy_root(value: Any) -> str:
    """DEPLOY_TO: absolute, normalized, at least two components (cleanup removes paths under
    it, so `/` or `/srv` would put the whole host or every app in reach)."""
    path = abs_path(value)
    parts = [part for part in path.split("/") if part]
    if any(part in (".", "..") for part in parts) or "//" in value.rstrip("/"):
        raise ValueError("expected a normalized path (no '.', '..' or '//')")
    if len(parts) < 2:
        raise ValueError("refused: a deploy root needs at least two path components "
                         "(e.g. /srv/APP), since cleanup removes paths under it")
    return path


def nginx_listen(value: Any) -> str:
    """An nginx `listen` value: address, port, [v6]."""
    address = text(value)
    if not re.fullmatch(r"[A-Za-z0-9_.:\[\]]+", address):
        raise ValueError(f"{address!r} is not an nginx listen address")
    return address


def nginx_path(value: Any) -> str:
    """An absolute path nginx takes unquoted (no spaces, quotes, ; { } $ #)."""
    path = abs_path(value)
    if not re.fullmatch(r"[A-Za-z0-9_./@%+=,:~-]+", path):
        raise ValueError(f"{path!r} has characters nginx cannot take unquoted")
    return path


# --- statuses -------------------------------------------------------------------------------

def status_ranges(value: Any) -> list[tuple[int, int]]:
    """HTTP statuses as inclusive ranges, from "200-299,301" or a list like [200, "300-399"]."""
    items = value.split(",") if isinstance(value, str) else list(value)
    ranges = []
    for item in items:
        word = str(item).strip()
        low, sep, high = word.partition("-")
        if not low.strip().isdigit() or (sep and not high.strip().isdigit()):
            raise ValueError(f"{word!r} is not a status or a range like 200-299")
        low_code, high_code = int(low), int(high if sep else low)
        if not 100 <= low_code <= high_code <= 599:
            raise ValueError(f"{word!r} is not a status range within 100-599")
        ranges.append((low_code, high_code))
    if not ranges:
        raise ValueError("expected at least one status")
    return ranges


def statuses(value: Any) -> str:
    """Validated and written the one canonical way: "200-299,301"."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (str, list, tuple)):
        raise ValueError("expected statuses like \"200-299,301\"")
    return ",".join(f"{low}" if low == high else f"{low}-{high}"
                    for low, high in status_ranges(value))


# --- lists and tables -----------------------------------------------------------------------

def str_list(value: Any) -> list[str]:
    """A list of non-empty strings; a string is split at commas (environment variables)."""
    if isinstance(value, str):
        value = [item for item in value.split(",") if item]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("expected a list of strings")
    return list(value)


def relative_list(value: Any) -> list[str]:
    items = str_list(value)
    for item in items:
        if item.startswith("/") or ".." in item.split("/"):
            raise ValueError(f"{item!r} must be a path relative to the release")
    return items


def host_names(value: Any) -> list[str]:
    """nginx server_name entries (no ':PORT': nginx takes a port in `listen`)."""
    names = str_list(value)
    for name in names:
        if not re.fullmatch(r"[A-Za-z0-9*_.~-]+", name):
            raise ValueError(f"{name!r} is not a host name")
    return names


def env_pair(value: Any) -> str:
    pair = text(value)
    if "=" not in pair or pair.startswith("="):
        raise ValueError(f"{pair!r} is not KEY=VALUE")
    return pair


def env_table(value: Any) -> dict[str, str]:
    """The server's env: from the CLI a list of KEY=VALUE; from TOML a table of strings."""
    if isinstance(value, dict):
        return {str(key): str(val) for key, val in value.items()}
    pairs = [env_pair(item) for item in ([value] if isinstance(value, str) else value)]
    return dict(pair.split("=", 1) for pair in pairs)


def mapping(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError("expected a mapping")
    return {str(k): str(v) for k, v in value.items()}


def env_names(value: Any) -> list[str]:
    """Names of environment variables (the deploy's `secrets`)."""
    names = str_list(value)
    for name in names:
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a variable name (letters, digits, '_')")
    return names


def env_lines(value: Any) -> dict[str, str]:
    """The deploy's env: names are shell variable names; values one line (the env file holds
    one per line). A bad value is named by its variable only, never shown."""
    env = mapping(value)
    for name, item in env.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a variable name (letters, digits, '_')")
        if "\n" in item or "\r" in item or "\0" in item:
            raise ValueError(f"the value of {name} spans lines: the env file holds one per line")
    return env


def hooks(value: Any) -> list[list[str]]:
    """Release commands: a string runs with `sh -c`, a list is an argv."""
    if not isinstance(value, (list, tuple)):
        raise ValueError("expected a list of commands (strings or lists of arguments)")
    out = []
    for hook in value:
        if isinstance(hook, str) and hook.strip():
            out.append(["sh", "-c", hook])
        elif isinstance(hook, (list, tuple)) and hook and all(isinstance(a, str) for a in hook):
            out.append(list(hook))
        else:
            raise ValueError(f"hook {hook!r} is not a command string or a list of arguments")
    return out


def per_host(value: Any) -> dict:
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise ValueError("expected a mapping of host name to a mapping of settings")
    return value
