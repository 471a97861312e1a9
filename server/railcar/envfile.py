"""Read an app's env file: KEY=VALUE lines, like systemd's EnvironmentFile=.

Runs in the master, at start (to refuse a bad file before anything runs) and at each spawn
batch (so a restart picks up values changed since). Format:
- one KEY=VALUE per line; KEY is a shell-style name (letters, digits, `_`, not starting with a
  digit); an optional leading `export ` is accepted;
- blank lines and lines starting with `#` or `;` are ignored;
- the value is taken as written after `=` with surrounding spaces stripped; a value wholly in
  single quotes is literal, one wholly in double quotes may escape `"` and `\\` with `\\`.

The values are secrets: no error message, log line or repr ever shows one. Errors name the
file and the line number and say what is wrong with its shape.
"""

from __future__ import annotations

import os
import re
import stat

from .settings import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class EnvFileError(ConfigError):
    """The env file cannot be read or a line is not KEY=VALUE (values never quoted back)."""


def _unquote(value: str, path: str, number: int) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        inner = value[1:-1]
        if value[0] == "'":
            return inner
        return re.sub(r'\\(["\\])', r"\1", inner)
    if value[:1] in ("'", '"'):
        raise EnvFileError(f"{path}: line {number}: the value's opening quote is not closed "
                           "at the end of the line")
    return value


def parse(text: str, path: str) -> dict[str, str]:
    """The variables of an env file's `text`; EnvFileError names `path` and the line."""
    variables: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep:
            raise EnvFileError(f"{path}: line {number}: expected KEY=VALUE (no '=' found)")
        if not _NAME.match(name):
            raise EnvFileError(f"{path}: line {number}: the name before '=' is not a valid "
                               "variable name (letters, digits and _, not starting with a digit)")
        variables[name] = _unquote(value.strip(), path, number)
    return variables


def read(path: str) -> dict[str, str]:
    """Read and parse the env file at `path`."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise EnvFileError(f"{path}: cannot read the env file: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvFileError(f"{path}: the env file is not UTF-8 text") from None
    return parse(text, path)


def loose_mode(path: str) -> int | None:
    """The file's permission bits if others than its owner (and group) may read it, else None:
    secrets belong in a file of mode 0600 (or 0640)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    return mode if mode & 0o007 else None
