"""The one runner every remote command goes through: argv lists, each argument quoted.

Nothing in railcar.deploy builds a shell string by hand: a command is a list of arguments
joined with shlex.join, optionally run in a directory (`cd DIR && ...`) with an environment
(`env K=V ...`). Failures raise RemoteError carrying the command and its output; nothing
returns a falsy "it failed".

Every call is a round trip, so a stage does its work in one `script`: a constant `sh -c`
text whose values come in as quoted positional arguments ("$1"...), never pasted into the
text. RAILCAR_DEPLOY_TRACE=1 prints every call with its duration.

One shell per connection (`Session`): an SSH exec request starts the SSH user's login shell,
which reads its rc files first (bash sources ~/.bashrc for every command sshd runs: a
version manager's init there costs ~0.1 CPU-s and 0.3 s per command), so every command of a
connection goes to one `sh` started once, over that one channel, each in its own subshell
with stdin from /dev/null, its end marked by a random token with its exit status. A command
that outlives its timeout closes the session (as a dropped connection would); the next
command starts a new one. Only Fabric's sudo (a password prompt on a pty) takes a channel
of its own per command.

Secrets: a Remote knows the values of the app's environment (`secrets`) and masks them in
every output and error it hands back, so a hook or a traceback that prints one shows `*****`.
Content (an env file) is uploaded over SFTP, never passed as an argument.

Privileges: `elevated(user)` gives a Remote that runs as root (directly when the SSH user is
root, else through Fabric's sudo: a NOPASSWD rule, or the password of FABRIC_SUDO_PASSWORD /
`fab --prompt-for-sudo-password`), or as another account through root (`runuser -u`). Its
`put` uploads as the SSH user into a private temp dir and installs the file as that account.
Only `fab setup` uses it.
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import secrets as tokens
import shlex
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from . import hostkeys

TRACE = os.environ.get("RAILCAR_DEPLOY_TRACE") == "1"   # print every remote call and its time


MASK = "*****"


def masker(secrets) -> "callable":
    """A function replacing every secret value (longest first) in a text with *****."""
    values = sorted({v for v in secrets if v}, key=len, reverse=True)

    def mask(text: str) -> str:
        for value in values:
            text = text.replace(value, MASK)
        return text
    return mask


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

    def __init__(self, connection, name: str | None = None, secrets=(),
                 _sudo: bool = False, _user: str | None = None):
        self.connection = connection
        self.name = name or getattr(connection, "original_host", None) or connection.host
        self.secrets = tuple(secrets)
        self.mask = masker(self.secrets)
        self._sudo = _sudo      # through Fabric's sudo (the SSH user is not root)
        self._user = _user      # run as this account (runuser), None: as the SSH user/root

    @property
    def login(self) -> str:
        """The SSH user."""
        return self.connection.user

    def elevated(self, user: str = "root") -> "Remote":
        """This host as root, or as `user` through root (see the module doc)."""
        root = self.login == "root"
        if user == self.login:
            return Remote(self.connection, self.name, self.secrets)
        return Remote(self.connection, self.name, self.secrets, _sudo=not root,
                      _user=None if user == "root" else user)

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
            check: bool = True, timeout: float | None = None, shown: str | None = None,
            on_line: Callable[[str], None] | None = None) -> Result:
        """Run argv on the host; raise RemoteError on a non-zero exit if `check`.
        With `on_line`, every line of its stdout is handed over as it arrives."""
        text = self.command(argv, cwd, env)
        wrapped = text
        if self._user:
            wrapped = shlex.join(["runuser", "-u", self._user, "--", "sh", "-c", text])
        elif self._sudo and (cwd or env):
            wrapped = shlex.join(["sh", "-c", text])
        started = time.monotonic()
        streams = {} if on_line is None else \
            {"hide": "stderr", "out_stream": _LineWriter(lambda line: on_line(self.mask(line)))}
        result = self._call(wrapped, timeout, **streams)
        self._trace("run", shown or text, started)
        out = Result(self.mask(result.stdout), self.mask(result.stderr), result.exited)
        if check and not out.ok:
            raise RemoteError(self.name, self.mask(text), out.exit_code, out.stdout + out.stderr)
        return out

    def _call(self, text: str, timeout: float | None = None, **streams):
        """One command on the host; a host key or sudo failure becomes a clear error.
        `streams`: invoke's hide/out_stream (default: everything captured, nothing shown)."""
        try:
            if self._sudo:
                return self.connection.sudo(text, warn=True, in_stream=False, timeout=timeout,
                                            **(streams or {"hide": True}))
            on_line = streams["out_stream"].on_line if "out_stream" in streams else None
            return Session.of(self.connection).run(self.name, text, timeout, on_line)
        except RemoteError:
            raise
        except Exception as exc:
            raise self._explain(exc) from None

    def _explain(self, exc: BaseException) -> BaseException:
        key_error = hostkeys.explain(exc, self.name, self.connection)
        if key_error is not None:
            return key_error
        if type(exc).__name__ == "AuthFailure":
            return RemoteError(self.name, "sudo", None,
                               f"sudo as {self.login} needs a password: set FABRIC_SUDO_PASSWORD"
                               " or run `fab --prompt-for-sudo-password ...` (or give "
                               f"{self.login} a NOPASSWD sudo rule)")
        return exc

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

    def put(self, local, remote: str, mode: str = "644") -> None:
        """Upload to `remote`. On an elevated Remote: as the SSH user into a private temp dir,
        then installed as the account this Remote runs as (mode `mode`)."""
        self.put_all([(local, remote)], mode)

    def put_all(self, uploads: list[tuple], mode: str = "644") -> None:
        """Upload each (local, remote path); on an elevated Remote through one temp dir and
        one install for all (see `put`)."""
        started = time.monotonic()
        try:
            if not (self._sudo or self._user):
                for local, target in uploads:
                    self.connection.put(local, target)
            elif uploads:
                self._put_installed(uploads, mode)
        except (RemoteError, hostkeys.HostKeyError):
            raise
        except OSError as exc:   # SFTP says only "Failure" for a full disk: see disk.py
            where = ", ".join(target for _, target in uploads)
            raise RemoteError(self.name, f"upload to {where}", None,
                              f"{where}: {exc.strerror or exc}") from None
        except Exception as exc:
            raise self._explain(exc) from None
        self._trace("put", ", ".join(target for _, target in uploads), started)

    def _put_installed(self, uploads: list[tuple], mode: str) -> None:
        plain = Remote(self.connection, self.name, self.secrets)
        staging = plain.run(["mktemp", "-d"]).stdout.strip()
        try:
            pairs = []
            for index, (local, target) in enumerate(uploads):
                staged = posixpath.join(staging, str(index))
                self.connection.put(local, staged)
                pairs += [staged, target]
            Remote(self.connection, self.name, self.secrets, _sudo=self._sudo).script(
                INSTALL, self._user or "root", mode, *pairs, label="install-files")
        finally:
            plain.run(["rm", "-rf", staging], check=False)

    def write(self, path: str, content: str, mode: int | None = None,
              private: bool = False) -> bool:
        """Atomically replace `path` with `content` (temp file + rename) if it differs.
        Returns whether it changed; idempotent. One upload and one round trip (`private`: the
        temp file is made 0600 before the content goes in, one more). The content goes over
        SFTP, never on a command line."""
        temp = f"{path}.tmp"
        if private and not (self._sudo or self._user):
            self.script('rm -f "$1" && (umask 077 && : > "$1")', temp, label="private-file")
        self.put(io.BytesIO(content.encode()), temp,
                 mode=format(mode, "o") if mode is not None else "644")
        out = self.script(REPLACE, temp, path, format(mode, "o") if mode is not None else "",
                          label="replace-file")
        return out.stdout.strip() == "changed"


@dataclass
class _Exited:
    """What a Session command returns (the fields of invoke's Result that Remote reads)."""

    stdout: str
    stderr: str
    exited: int


class Session:
    """One `sh` on the host per connection, running its commands one at a time (see the
    module doc). Thread-safe: commands of several threads on one connection take turns."""

    def __init__(self, connection):
        self.connection = connection
        self.lock = threading.Lock()
        self.channel = None
        self.transport = None
        self.changed = threading.Condition()
        self.out = bytearray()
        self.err = bytearray()
        self.ended = 0          # readers that met the end of their stream

    @classmethod
    def of(cls, connection) -> "Session":
        """The connection's Session. It lives in the Connection object's own __dict__: an
        attribute set the ordinary way on a Fabric Connection goes into its config, which
        the connections of one run share (and which Fabric may rebuild), so a host would
        find another host's session, or none and start a second `sh`."""
        session = vars(connection).get("_railcar_session")
        if session is None:
            session = cls(connection)
            object.__setattr__(connection, "_railcar_session", session)
        return session

    def _alive(self) -> bool:
        return (self.channel is not None and not self.channel.closed and self.ended == 0
                and self.transport is self.connection.transport
                and self.transport is not None and self.transport.is_active())

    def _start(self) -> None:
        self.close()
        self.connection.open()
        self.transport = self.connection.transport
        channel = self.transport.open_session()
        channel.exec_command("exec sh")
        self.channel, self.out, self.err, self.ended = channel, bytearray(), bytearray(), 0
        for read, buffer in ((channel.recv, self.out), (channel.recv_stderr, self.err)):
            threading.Thread(target=self._read, args=(channel, read, buffer),
                             daemon=True).start()

    def _read(self, channel, read, buffer: bytearray) -> None:
        while True:
            try:
                data = read(65536)
            except Exception:
                data = b""
            with self.changed:
                if channel is not self.channel:
                    return
                if not data:
                    self.ended += 1
                else:
                    buffer += data
                self.changed.notify_all()
            if not data:
                return

    def close(self) -> None:
        if self.channel is not None:
            try:
                self.channel.close()
            except Exception:
                pass
        with self.changed:
            self.channel = None
            self.changed.notify_all()

    def run(self, host: str, text: str, timeout: float | None,
            on_line: Callable[[str], None] | None) -> _Exited:
        with self.lock:
            if not self._alive():
                self._start()
            mark = f"railcar-done-{tokens.token_hex(8)}"
            done_out = re.compile(rb"%s (\d+)\n" % mark.encode())
            done_err = f"{mark}\n".encode()
            self.channel.sendall((f"( {text}\n) </dev/null\n"
                                  f"printf '%s %d\\n' {mark} \"$?\"; "
                                  f"printf '%s\\n' {mark} >&2\n").encode())
            deadline = None if timeout is None else time.monotonic() + timeout
            # Each wake-up looks only at what arrived since the last one (a marker may
            # straddle two reads: the search starts a marker's length before the new
            # bytes), so a command with much output costs linear time, not quadratic.
            streamed = out_seen = err_seen = 0
            found, at = None, -1
            with self.changed:
                while True:
                    if found is None:
                        found = done_out.search(self.out, max(0, out_seen - len(mark) - 24))
                        out_seen = len(self.out)
                    if at < 0:
                        at = self.err.find(done_err, max(0, err_seen - len(done_err)))
                        err_seen = len(self.err)
                    if on_line is not None:
                        end = found.start() if found else self.out.rfind(b"\n", streamed) + 1
                        if end > streamed:
                            for line in bytes(self.out[streamed:end]).splitlines():
                                on_line(line.decode("utf-8", "replace"))
                            streamed = end
                    if found and at >= 0:
                        break
                    if self.ended or self.channel is None:
                        self.channel = None
                        raise RemoteError(host, text, None, "the connection to the host "
                                          "ended during the command")
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        self.channel.close()
                        self.channel = None
                        raise RemoteError(host, text, None, f"no answer in {timeout:g} s")
                    self.changed.wait(left)
                result = _Exited(bytes(self.out[:found.start()]).decode("utf-8", "replace"),
                                 bytes(self.err[:at]).decode("utf-8", "replace"),
                                 int(found.group(1)))
                del self.out[:found.end()]
                del self.err[:at + len(done_err)]
                return result


class _LineWriter:
    """A file-like sink that hands complete lines to a callback (invoke's out_stream)."""

    def __init__(self, on_line: Callable[[str], None]):
        self.on_line = on_line
        self.buffer = ""

    def write(self, data: str) -> None:
        self.buffer += data
        while "\n" in self.buffer:
            line, self.buffer = self.buffer.split("\n", 1)
            self.on_line(line)

    def flush(self) -> None:
        pass


# $1 owner, $2 mode; then pairs of staged file and target: a copy owned by $1 (its primary
# group) renamed over each target.
INSTALL = r'''
owner=$1 mode=$2 group=$(id -gn "$1") || exit 1
shift 2
while [ $# -ge 2 ]; do
  install -o "$owner" -g "$group" -m "$mode" "$1" "$2.part" && mv -f "$2.part" "$2" || exit 1
  shift 2
done
'''

# $1 temp file, $2 target, $3 mode or "": rename over the target unless identical (then only
# the target's owner and mode are made the temp file's).
REPLACE = r'''
if cmp -s "$1" "$2"; then
  chown --reference="$1" "$2" 2>/dev/null; [ -z "$3" ] || chmod "$3" "$2"
  rm -f "$1"; echo same; exit 0
fi
if [ -n "$3" ]; then chmod "$3" "$1"; fi
mv -f "$1" "$2" && echo changed
'''
