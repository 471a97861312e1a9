"""The one runner every remote command goes through: argv lists, each argument quoted.

Nothing in railcar.deploy builds a shell string by hand: a command is a list of arguments
joined with shlex.join, optionally run in a directory (`cd DIR && ...`) with an environment
(`env K=V ...`). Failures raise RemoteError carrying the command and its output; nothing
returns a falsy "it failed".

Every call is an SSH round trip (a new session and shell on the host, 0.1-1 s on a busy
machine), so a stage does its work in one `script`: a constant `sh -c` text whose values
come in as quoted positional arguments ("$1"...), never pasted into the text.
RAILCAR_DEPLOY_TRACE=1 prints every call with its duration.
"""

from __future__ import annotations

import io
import os
import shlex
import sys
import time
from dataclasses import dataclass

TRACE = os.environ.get("RAILCAR_DEPLOY_TRACE") == "1"   # print every remote call and its time


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
            check: bool = True, timeout: float | None = None, shown: str | None = None) -> Result:
        """Run argv on the host; raise RemoteError on a non-zero exit if `check`."""
        text = self.command(argv, cwd, env)
        started = time.monotonic()
        result = self.connection.run(text, hide=True, warn=True, in_stream=False,
                                     timeout=timeout)
        self._trace("run", shown or text, started)
        out = Result(result.stdout, result.stderr, result.exited)
        if check and not out.ok:
            raise RemoteError(self.name, text, out.exit_code, out.stdout + out.stderr)
        return out

    def script(self, text: str, *args: str, label: str, check: bool = True,
               timeout: float | None = None) -> Result:
        """Run a constant shell script with quoted arguments in one round trip; a failure
        names it by `label` (not its whole text)."""
        try:
            return self.run(["sh", "-c", text, label, *args], check=check, timeout=timeout,
                            shown=shlex.join(["script", label, *args]))
        except RemoteError as exc:
            raise RemoteError(self.name, shlex.join([label, *args]), exc.exit_code,
                              exc.output) from None

    def test(self, argv: list[str]) -> bool:
        """True if argv exits 0 (for read-only checks such as `test -e PATH`)."""
        return self.run(argv, check=False).ok

    def exists(self, path: str) -> bool:
        return self.test(["test", "-e", path])

    def read(self, path: str, default: str | None = None) -> str | None:
        result = self.run(["cat", path], check=False)
        return result.stdout if result.ok else default

    def _trace(self, kind: str, what: str, started: float) -> None:
        if TRACE:
            print(f"[{self.name}]   {time.monotonic() - started:6.3f}s {kind} {what[:150]}",
                  file=sys.stderr, flush=True)

    def put(self, local, remote: str) -> None:
        started = time.monotonic()
        self.connection.put(local, remote)
        self._trace("put", remote, started)

    def write(self, path: str, content: str, mode: int | None = None) -> bool:
        """Atomically replace `path` with `content` (temp file + rename) if it differs.
        Returns whether it changed; idempotent. One upload and one round trip."""
        temp = f"{path}.tmp"
        self.put(io.BytesIO(content.encode()), temp)
        out = self.script(REPLACE, temp, path, format(mode, "o") if mode is not None else "",
                          label="replace-file")
        return out.stdout.strip() == "changed"


# $1 temp file, $2 target, $3 mode or "": rename over the target unless identical.
REPLACE = r'''
if cmp -s "$1" "$2"; then rm -f "$1"; echo same; exit 0; fi
if [ -n "$3" ]; then chmod "$3" "$1"; fi
mv -f "$1" "$2" && echo changed
'''
