"""The app's environment on a host: `env` and `secrets` in one env file, never in argv.

DEPLOY_TO/shared/railcar.env, mode 0600, owned by the app account: KEY="VALUE" lines (the
format of systemd's EnvironmentFile, which `railcar start --env-file` reads). Its content
goes up over SFTP, never as an argument of a command.

Who writes it: `fab setup` (as root) always; `fab deploy` when its SSH user may (root, or
the app account itself). A deploy account that is neither cannot create a file owned by the
app account, so it compares: setup leaves DEPLOY_TO/.railcar-env.sum (the deploy account's,
0600: a random salt and sha256(salt + content)); a deploy whose env/secrets differ from what
setup installed fails before uploading anything, telling to run `fab setup` again.
"""

from __future__ import annotations

import hashlib
import secrets as random


def quote(value: str) -> str:
    """A value in double quotes, `"` and `\\` escaped with `\\` (what the server reads back
    exactly, whatever the value holds but a newline)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(env: dict[str, str]) -> str:
    """The env file: a header, then KEY="VALUE" per variable (values are single lines)."""
    lines = ["# The app's environment, written by railcar.deploy (env and secrets of "
             "fabric.yaml).", "# Mode 0600, owned by the app account; edits are replaced."]
    lines += [f"{name}={quote(value)}" for name, value in sorted(env.items())]
    return "\n".join(lines) + "\n"


def render_raw(env: dict[str, str]) -> str:
    """KEY=VALUE lines for the hooks' runner (`export "$line"`: no quoting needed)."""
    return "".join(f"{name}={value}\n" for name, value in sorted(env.items()))


def digest(salt: str, content: str) -> str:
    return hashlib.sha256((salt + "\n" + content).encode()).hexdigest()


def sum_file(content: str) -> str:
    salt = random.token_hex(16)
    return f"{salt} {digest(salt, content)}\n"


def matches(sum_text: str | None, content: str) -> bool:
    """Whether the env file setup installed (as recorded in `sum_text`) is `content`."""
    try:
        salt, recorded = (sum_text or "").split()
    except ValueError:
        return False
    return digest(salt, content) == recorded
