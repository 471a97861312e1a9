"""The one runner every remote command goes through: argv lists, each argument quoted.

Nothing in railcar.deploy builds a shell string by hand: a command is a list of arguments
joined with shlex.join, optionally run in a directory (`cd DIR && ...`) with an environment
(`env K=V ...`). Failures raise RemoteError carrying the command and its output; nothing
returns a falsy "it failed".
"""

from __future__ import annotations

import io
import shlex
from dataclasses import dataclass


class RemoteError(Exception):
    """A remote command failed: the message holds the host, the command and its output."""

    def __init__(self, host: str, command: str, exit_code: int | None, output: str):
        self.host, self.command, self.exit_code, self.output = host, command, exit_code, output
        detail = f"\n{output.rstrip()}" if output.strip() else ""
        super().__init__(f"[{host}] `{command}` failed (exit {exit_code}){detail}")


@dataclass
class Result:
    stdout: str
    stderr: str
    exit_code: int

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


class Remote:
    """One host: a Fabric Connection wrapped so that every command is quoted the same way."""

    def __init__(self, connection, name: str | None = None):
        self.connection = connection
        self.name = name or getattr(connection, "original_host", None) or connection.host

    @staticmethod
    def command(argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None) -> str:
        if not isinstance(argv, (list, tuple)) or not argv \
                or not all(isinstance(arg, str) for arg in argv):
            raise TypeError(f"a command is a non-empty list of strings, got {argv!r}")
        text = shlex.join(argv)
        if env:
            text = shlex.join(["env", *(f"{k}={v}" for k, v in env.items())]) + " " + text
        if cwd:
            text = f"cd {shlex.quote(cwd)} && {text}"
        return text

    def run(self, argv: list[str], cwd: str | None = None, env: dict[str, str] | None = None,
            check: bool = True, timeout: float | None = None) -> Result:
        """Run argv on the host; raise RemoteError on a non-zero exit if `check`."""
        text = self.command(argv, cwd, env)
        result = self.connection.run(text, hide=True, warn=True, in_stream=False,
                                     timeout=timeout)
        out = Result(result.stdout, result.stderr, result.exited)
        if check and not out.ok:
            raise RemoteError(self.name, text, out.exit_code, out.stdout + out.stderr)
        return out

    def test(self, argv: list[str]) -> bool:
        """True if argv exits 0 (for read-only checks such as `test -e PATH`)."""
        return self.run(argv, check=False).ok

    def exists(self, path: str) -> bool:
        return self.test(["test", "-e", path])

    def read(self, path: str, default: str | None = None) -> str | None:
        result = self.run(["cat", path], check=False)
        return result.stdout if result.ok else default

    def put(self, local: str, remote: str) -> None:
        self.connection.put(local, remote)

    def write(self, path: str, content: str, mode: int | None = None) -> bool:
        """Atomically replace `path` with `content` (temp file + rename) if it differs.
        Returns whether it changed; idempotent."""
        if self.read(path) == content:
            return False
        temp = f"{path}.tmp"
        self.connection.put(io.BytesIO(content.encode()), temp)
        if mode is not None:
            self.run(["chmod", format(mode, "o"), temp])
        self.run(["mv", "-f", temp, path])
        return True

    def append(self, path: str, line: str) -> None:
        self.run(["sh", "-c", 'printf "%s\\n" "$1" >> "$2"', "sh", line, path])
