"""`fab`'s side of the host-side publish (publish.py runs on the host): the spec it is
started with, the relay of its progress, its outcome even after the stream broke; and the
stages built on it (rows of pipeline.STAGES): publish, revert, pick (a rollback's target),
and restart (the `restart` task, which restarts from `fab`).
"""

from __future__ import annotations

import getpass
import json
import posixpath

from . import releases as rel
from . import service, status
from .host import DeployError, Host, PublishError


def publish_spec(host: Host, kind: str, target: str, revision: str = "",
                 abandon: str | None = None, reason: str | None = None) -> dict:
    """What railcar.deploy.publish does on the host (see its docstring)."""
    paths, config = host.paths, host.config
    return {"root": paths.root, "target": target, "kind": kind, "abandon": abandon,
            "reason": reason, "revision": revision, "by": getpass.getuser(),
            "admin_socket": paths.admin_socket, "app": config.app,
            "restart": service.service_command(paths, config, "restart"),
            "stop": service.service_command(paths, config, "stop"),
            "health_path": config.health_path, "keep": config.keep_releases,
            "probe": status.probe_args(paths, config, paths.release(target))}


# $1 the lock's holder file, $2 seconds, $3 the release's state file, $4 its publish log:
# wait until no host-side publish holds the holder file, then print the state and the
# publish's last line (its outcome).
AWAIT_OUTCOME = r'''
[ -e "$1" ] && flock -w "$2" "$1" true
printf 'state %s\n' "$(head -n 1 "$3" 2>/dev/null)"
tail -n 1 "$4" 2>/dev/null
'''


def await_outcome(host: Host, target: str) -> str:
    """After the stream of a publish broke while `fab` lives: wait for the host-side publish
    to end and read its outcome line from the host."""
    paths = host.paths
    host.say("lost the publish's progress stream: waiting for its outcome on the host")
    try:
        host.remote.connection.close()
        out = host.remote.script(
            AWAIT_OUTCOME, posixpath.join(paths.lock, "holder"), f"{host.config.lock_timeout}",
            posixpath.join(paths.release(target), rel.STATE_FILE),
            posixpath.join(paths.release(target), rel.PUBLISH_LOG), label="await-publish").stdout
    except Exception as exc:
        raise DeployError(f"[{host.name}] lost the connection during the publish of {target}; "
                          "the host completes or rolls it back on its own: see `fab releases` "
                          f"and `fab status` ({exc})") from None
    lines = out.splitlines()
    return next((line for line in reversed(lines) if line.startswith("outcome ")),
                "outcome good" if lines[:1] == ["state good"] else "outcome failed: unknown")


def publish_on_host(host: Host, kind: str, target: str, revision: str = "",
                    abandon: str | None = None, reason: str | None = None) -> str:
    """Run the publish on the host and relay its progress; PublishError if it did not
    publish (the host has already put back what was current)."""
    spec = publish_spec(host, kind, target, revision, abandon, reason)
    seen: list[str] = []

    def relay(line: str) -> None:
        seen.append(line)
        if not line.startswith("outcome "):
            host.say(line)
        if line.startswith("swap     ok"):
            host.swapped = True

    argv = [host.paths.server_python, "-m", "railcar.deploy.publish", json.dumps(spec)]
    try:
        result = host.remote.run(argv, check=False, on_line=relay, shown="publish")
        code = result.exit_code
    except Exception:       # the connection broke: the host goes on without us
        result, code = None, None
    outcome = next((line for line in reversed(seen) if line.startswith("outcome ")), None)
    forked = any(line.startswith("publish  host-side pid") for line in seen)
    if outcome is None and result is not None and not forked:
        raise PublishError(f"[{host.name}] the host-side publish did not start (exit {code}): "
                           f"{(result.stderr or result.stdout).strip()[-2000:]}", changed=False)
    if outcome is None:
        outcome = await_outcome(host, target)
    if outcome == "outcome good":
        return f"current -> releases/{target}"
    what = outcome.partition(" ")[2]
    if what.startswith("refused"):
        raise PublishError(f"[{host.name}] publish of {target} {what}", changed=False)
    detail = "\n".join(line for line in seen if line.startswith("         "))
    restored = f"current restored ({host.previous or 'none'})" if code != 2 else \
        "and putting back the previous release failed too: see `fab status`"
    raise PublishError(f"[{host.name}] publish of {target} {what}; {restored}"
                       + (f"\n{detail}" if detail else ""), changed=True)


def stage_publish(host: Host) -> str:
    """Publish host.release (a new release, or a rollback's target) on the host."""
    return publish_on_host(host, host.kind, host.release, host.revision)


def stage_revert(host: Host) -> str:
    """Put a published host back on its previous release; the new one is marked failed."""
    return publish_on_host(host, "rollback", host.previous, abandon=host.release,
                           reason=host.reason)


def stage_pick(host: Host) -> str:
    """The rollback's target: host.release if named (it must be good), else the previous
    good release."""
    found = rel.read_inventory(host.remote, host.paths)
    host.previous = found.current
    by_name = {r.name: r for r in found.releases}
    if host.release:
        chosen = by_name.get(host.release)
        if chosen is None or chosen.state != rel.GOOD:
            state = chosen.state if chosen else "not found"
            raise DeployError(f"[{host.name}] cannot roll back to {host.release}: {state}")
    else:
        chosen = rel.previous_good(found.releases)
        if chosen is None:
            raise DeployError(f"[{host.name}] no good release older than "
                              f"{host.previous or 'current'} to roll back to")
    host.release, host.revision = chosen.name, chosen.revision
    return f"releases/{chosen.name}"


def stage_restart(host: Host) -> str:
    """A rolling restart from `fab` (the `restart` task; deploys restart on the host)."""
    output = service.restart(host.remote, host.paths, host.config).strip()
    return output.splitlines()[-1] if output else ""
