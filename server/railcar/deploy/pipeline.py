"""The deploy pipeline: named, short, idempotent stages run on every host.

    prepare  (every host, in parallel; no host swaps before all are prepared)
      lock     take the deploy lock (a stale one is detected and taken over)
      check    the host is set up, runs this railcar version, has the shared files
      upload   the release tarball and any wheel the host lacks
      unpack   into releases/<UTC timestamp>-<short sha>/ with a REVISION file
      link     shared dirs and files into the release
      env      (only when env/secrets changed and the SSH user may) write the env file
      venv     build or reuse the virtualenv keyed by the requirements' hash
      hooks    run the configured commands in the release (migrations...)
    publish  (ON THE HOST, detached from the SSH session: railcar.deploy.publish; hosts in
              parallel, in batches after optional canary hosts: fleet.py)
      swap     point `current` at the release: symlink to a temp name, rename over
      restart  rolling restart through the admin socket (or start the server)
      health   GET health_path through the app's socket; every worker on the release
      mark     mark the release good, append to the revisions log
      (a failure in any of them: `current` put back, restarted onto, release marked failed)
      cleanup  keep keep_releases good releases, drop failed/incomplete ones and unused venvs
    finish   (every host)
      nginx    (railcar.nginx.enabled) render the site on the host, install it if changed,
               nginx -t, reload; a failed test keeps the old site (as root; a deploy
               account only warns when it is out of date: `fab setup` installs it)
      unlock   release the lock

A failure before `swap` leaves `current` untouched on every host and marks the release
failed (a release that cannot even be marked, on a full disk, is removed). A failure after
it is undone on the host by the publish itself, which goes on even if `fab` dies. A failure
that is a full disk is reported as such (disk.py). Failed releases are never rollback
targets and don't count against keep_releases.
"""

from __future__ import annotations

import getpass
import json
import os
import posixpath
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from . import disk, envfile, nginx, service, status, venvs
from . import facts as host_facts
from .wheels import describe, upload, wheel_id
from . import lock as locks
from . import releases as rel
from .build import Archive
from .paths import VENV_DONE, Paths
from .remote import Remote
from .settings import DeployConfig


class DeployError(Exception):
    """The deploy failed; the message says where and why, and what state hosts are in."""


class PublishError(DeployError):
    """The host-side publish did not publish. `changed` is False when it refused before the
    swap (current untouched), True when it failed after and restored the previous release."""

    def __init__(self, message: str, changed: bool):
        super().__init__(message)
        self.changed = changed


class Reporter:
    """Prints stage progress (`[host] stage ...`) from several threads, one line at a time."""

    def __init__(self, write: Callable[[str], None] | None = None):
        self._lock = threading.Lock()
        self._write = write or (lambda text: print(text, flush=True))

    def line(self, text: str) -> None:
        with self._lock:
            self._write(text)


@dataclass
class Host:
    """One host's part of a deploy or rollback."""

    remote: Remote
    config: DeployConfig
    reporter: Reporter
    release: str | None = None          # release name being deployed
    previous: str | None = None         # what `current` pointed to before the swap
    swapped: bool = False
    unpacked: bool = False
    locked: bool = False
    facts: host_facts.Facts | None = None  # what the check stage found
    env: dict[str, str] = field(default_factory=dict)  # the app's env (env + secrets)
    env_changed: bool = False           # the env file must be written (the check found)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.remote.name

    @property
    def paths(self) -> Paths:
        return Paths(self.config.deploy_to)

    @property
    def release_dir(self) -> str:
        return self.paths.release(self.release)

    def say(self, text: str) -> None:
        self.reporter.line(f"[{self.name}] {text}")

    def stage_path(self, name: str) -> str:
        """Where a stage writes: the path a full-disk diagnosis names."""
        if name == "lock":
            return self.paths.lock
        if name == "upload":
            return self.paths.tmp
        if name == "venv":
            return self.paths.venvs
        if self.release and name in ("unpack", "link", "hooks", "publish", "mark"):
            return self.release_dir
        return self.paths.root

    def stage(self, name: str, description: str, action: Callable[[], str | None]) -> None:
        self.say(f"{name:<8} {description} ...")
        started = time.monotonic()
        try:
            detail = action()
        except Exception as exc:
            self.timings[name] = time.monotonic() - started
            self.say(f"{name:<8} FAILED after {self.timings[name]:.1f}s")
            text = f"{exc}\n{getattr(exc, 'output', '')}"
            cause = None if "no space left on device" in text else \
                disk.explain(self.remote, text, self.stage_path(name), name)
            if cause:
                self.reporter.line(cause)
                raise DeployError(f"{cause}\n{exc}") from None
            raise
        self.timings[name] = time.monotonic() - started
        self.say(f"{name:<8} ok {self.timings[name]:.1f}s" + (f"  {detail}" if detail else ""))


# --- stages ---------------------------------------------------------------------------------
def stage_lock(host: Host, what: str) -> str:
    locks.acquire(host.remote, host.paths, what, host.config.lock_timeout, host.say)
    host.locked = True
    return f"{host.paths.lock}"


def stage_check(host: Host, wheels: list[str]) -> str:
    remote, paths = host.remote, host.paths
    shared_files = [posixpath.join(paths.shared, f) for f in host.config.shared_files]
    host.facts = known = host_facts.read(remote, paths, wheels, shared_files)
    if not known.server_python:
        raise DeployError(f"[{host.name}] {paths.server_python} is missing: run `fab setup` first")
    wanted = wheel_id(wheels[0])
    if known.installed != wanted:
        raise DeployError(f"[{host.name}] the server venv has "
                          f"{describe(known.installed) or 'no railcar'}, this deploy "
                          f"ships {describe(wanted)}: run `fab setup` first")
    if known.missing:
        absent = [posixpath.relpath(path, paths.shared) for path in known.missing]
        raise DeployError(f"[{host.name}] shared files missing in {paths.shared}: "
                          f"{', '.join(absent)} (railcar.shared_files)")
    host.previous = known.current
    login, user = remote.login, host.config.user
    if not envfile.matches(known.env_sum, envfile.render(host.env)):
        if login not in ("root", user):
            names = ", ".join(sorted(host.env)) or "none"
            raise DeployError(
                f"[{host.name}] the app's environment (env and secrets: {names}) differs from "
                f"the env file `fab setup` installed, and {login} may not write {user}'s "
                f"{paths.env_file}: run `fab setup` (with the same secrets exported) first")
        host.env_changed = True
    if not known.running and login not in ("root", user):
        raise DeployError(f"[{host.name}] the server is not running, and {login} may not start "
                          f"it as {user}: run `fab setup` (it starts the server), then deploy")
    return f"current: {host.previous or '(none)'}"


def stage_upload(host: Host, archive: Archive, wheels: list[str]) -> str:
    sent = upload(host.remote, host.paths, wheels, host.facts)
    target = posixpath.join(host.paths.tmp, f"{host.release}.tar.gz")
    host.remote.put(archive.path, target)
    size = os.path.getsize(archive.path)
    return f"{size / 1024:.0f} KiB" + (f", wheels: {', '.join(sent)}" if sent else "")


# $1 release dir, $2 tarball, $3 revision: a new release dir (never an existing one: names
# are unique) with the tarball's files and a REVISION file; the tarball is removed.
UNPACK = r'''
set -e
if [ -e "$1" ]; then echo "$1 exists: a release name is never reused" >&2; exit 1; fi
mkdir "$1"
tar -xzf "$2" -C "$1"
printf '%s\n' "$3" > "$1/REVISION"
rm -f "$2"
'''


def tarball(host: Host) -> str:
    return posixpath.join(host.paths.tmp, f"{host.release}.tar.gz")


def stage_unpack(host: Host, archive: Archive) -> str:
    host.unpacked = True
    host.remote.script(UNPACK, host.release_dir, tarball(host), archive.revision, label="unpack")
    return host.release_dir


# $1 release dir, $2 shared dir; then "d:NAME" (a shared dir, created if missing) or
# "f:NAME" (a shared file) for each item linked from shared/ into the release.
LINK = r'''
set -e
release=$1 shared=$2
shift 2
for item in "$@"; do
  name=${item#?:}
  case $item in d:*) mkdir -p "$shared/$name" ;; esac
  mkdir -p "$(dirname "$release/$name")"
  rm -rf "$release/$name"
  ln -s "$shared/$name" "$release/$name"
done
'''


def stage_link(host: Host) -> str:
    config = host.config
    items = [f"d:{d}" for d in config.shared_dirs] + [f"f:{f}" for f in config.shared_files]
    if items:
        host.remote.script(LINK, host.release_dir, host.paths.shared, *items, label="link-shared")
    return f"{len(config.shared_dirs)} dir(s), {len(config.shared_files)} file(s)"


def stage_env(host: Host) -> str:
    """Write the env file (0600, the app account's) and its sum; content over SFTP only."""
    remote, paths = host.remote, host.paths
    content = envfile.render(host.env)
    remote.elevated(host.config.user).write(paths.env_file, content, mode=0o600, private=True)
    remote.write(paths.env_sum, envfile.sum_file(content), mode=0o600, private=True)
    return f"wrote {paths.env_file}: {', '.join(sorted(host.env)) or 'empty'}"


def stage_venv(host: Host, archive: Archive, wheel: str) -> str:
    key, reused = venvs.ensure(host.remote, host.paths, host.config, host.release_dir,
                               archive.path, os.path.basename(wheel), wheel_id(wheel))
    return f"{'reused' if reused else 'built'} venvs/{key}"


def hook_env(host: Host) -> dict[str, str]:
    venv_bin = posixpath.join(host.release_dir, ".venv", "bin")
    return {**host.env, "VIRTUAL_ENV": posixpath.join(host.release_dir, ".venv"),
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "RAILCAR_RELEASE": host.release_dir, "RAILCAR_SHARED": host.paths.shared}


# $1 the hooks' env file (KEY=VALUE lines), $2 the release; then the hook's argv. The values
# come from a file (uploaded over SFTP into the deploy account's 0700 tmp/), never from argv.
HOOK = r'''
envfile=$1 dir=$2
shift 2
while IFS= read -r line; do export "$line"; done < "$envfile"
cd "$dir" && exec "$@"
'''


def stage_hooks(host: Host) -> str:
    if not host.config.hooks:
        return "0 hook(s)"
    remote = host.remote
    env_path = posixpath.join(host.paths.tmp, f"hook-env-{host.release}")
    remote.write(env_path, envfile.render_raw(hook_env(host)), mode=0o600, private=True)
    try:
        for argv in host.config.hooks:
            remote.script(HOOK, env_path, host.release_dir, *argv, label="hook")
    finally:
        remote.run(["rm", "-f", env_path], check=False)
    return f"{len(host.config.hooks)} hook(s)"


def stage_restart(host: Host) -> str:
    """A rolling restart from `fab` (the `restart` task; deploys restart on the host)."""
    output = service.restart(host.remote, host.paths, host.config).strip()
    return output.splitlines()[-1] if output else ""


def revision_line(host: Host, event: str, revision: str = "") -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{when} {event} {host.release} revision {revision or '-'} by {getpass.getuser()}"


# --- publish (on the host) ------------------------------------------------------------------
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


def stage_publish(host: Host, kind: str, target: str, revision: str = "",
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


def stage_unlock(host: Host) -> str:
    locks.release(host.remote, host.paths)
    host.locked = False
    return ""


# --- recovery -------------------------------------------------------------------------------
# $1 release dir, $2 its state file, $3 the uploaded tarball, $4 revisions log, $5 log line,
# $6 venvs dir, $7 a venv's completion marker: mark the release failed; one that cannot be
# marked (a full disk) is removed, as are half-built venvs (never used: no marker), so
# nothing half-written stays. Prints "marked", "removed" or "none".
FAIL = r'''
rm -f "$3"
for v in "$6"/*/; do [ -d "$v" ] && [ ! -e "$v$7" ] && rm -rf "$v"; done
[ -d "$1" ] || { echo none; exit 0; }
if printf 'failed\n' > "$2.tmp" 2>/dev/null && mv -f "$2.tmp" "$2"; then
  printf '%s\n' "$5" >> "$4" 2>/dev/null
  echo marked
else
  rm -rf "$1"
  echo removed
fi
'''


def fail_before_swap(host: Host, revision: str) -> None:
    """Mark the release failed (or remove it when it cannot be marked) and unlock; `current`
    was never touched. Never raises: the deploy's own error is what the user must see."""
    try:
        mark_failed(host, revision)
    finally:
        if host.locked:
            try:
                stage_unlock(host)
            except Exception as exc:
                host.say(f"could not drop the deploy lock: {exc}")


def mark_failed(host: Host, revision: str) -> None:
    """Mark the release failed, or remove it when it cannot be marked; never raises."""
    try:
        if host.release and (host.unpacked or "upload" in host.timings):
            release = host.release_dir
            done = host.remote.script(FAIL, release, posixpath.join(release, rel.STATE_FILE),
                                      tarball(host), host.paths.revisions_log,
                                      revision_line(host, "failed", revision),
                                      host.paths.venvs, VENV_DONE,
                                      label="fail-release").stdout.strip()
            if done == "marked":
                host.say(f"marked releases/{host.release} failed; current unchanged "
                         f"({host.previous or 'none'})")
            elif done == "removed":
                host.say(f"removed releases/{host.release} (it could not be marked failed); "
                         f"current unchanged ({host.previous or 'none'})")
    except Exception as exc:
        host.say(f"could not mark releases/{host.release} failed: {exc}")


# --- the run --------------------------------------------------------------------------------
def prepare(host: Host, archive: Archive, wheels: list[str]) -> None:
    host.stage("lock", "take the deploy lock",
               lambda: stage_lock(host, f"deploying {archive.ref} ({archive.short})"))
    host.stage("check", "host set up, shared files present", lambda: stage_check(host, wheels))
    host.stage("upload", "upload release and missing wheels",
               lambda: stage_upload(host, archive, wheels))
    host.stage("unpack", f"unpack into releases/{host.release}", lambda: stage_unpack(host, archive))
    host.stage("link", "link shared dirs and files", lambda: stage_link(host))
    if host.env_changed:
        host.stage("env", "write the env file (env, secrets changed)", lambda: stage_env(host))
    host.stage("venv", "build or reuse the virtualenv",
               lambda: stage_venv(host, archive, wheels[0]))
    host.stage("hooks", "run hooks in the release", lambda: stage_hooks(host))


def publish(host: Host, archive: Archive) -> None:
    """Publish the prepared release on the host (swap, restart, health, mark; undone there
    on failure)."""
    try:
        host.stage("publish", "swap, restart, health, mark on the host (detached)",
                   lambda: stage_publish(host, "deploy", host.release, archive.revision))
    except PublishError as exc:
        if not exc.changed:     # refused before the swap: the release was never marked
            mark_failed(host, archive.revision)
        raise


def revert(host: Host, reason: str) -> None:
    """Put a host that published the release back on its previous release (the release is
    marked failed); for a canary that failed its watch or a fleet over its failure budget."""
    if not host.previous:
        host.say("no previous release to go back to: left on the new release")
        return
    host.stage("revert", f"back to releases/{host.previous} ({reason})",
               lambda: stage_publish(host, "rollback", host.previous, abandon=host.release,
                                     reason=reason))


def finish(host: Host) -> None:
    """After the publish (which also cleaned up, on the host): the nginx site, unlock."""
    try:
        if host.config.nginx["enabled"]:
            install = host.remote.login == "root"   # only root writes under /etc
            host.stage("nginx", f"site {nginx.nginx_site(host.config)}, "
                       + ("test, reload" if install else "up to date?"),
                       lambda: nginx.ensure_nginx_site(host.remote, host.paths, host.config,
                                                         install=install))
    finally:
        host.stage("unlock", "release the deploy lock", lambda: stage_unlock(host))


def parallel(hosts: list[Host], action: Callable[[Host], None]) -> dict[str, Exception]:
    """Run `action` on every host at once; the errors by host name."""
    errors: dict[str, Exception] = {}

    def run(host: Host) -> None:
        try:
            action(host)
        except Exception as exc:
            errors[host.name] = exc

    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        list(pool.map(run, hosts))
    return errors


def deploy(hosts: list[Host], archive: Archive, wheels: list[str], release: str) -> None:
    """Run the pipeline on every host. Raises DeployError; hosts are left consistent."""
    from . import fleet

    started = time.monotonic()
    for host in hosts:
        host.release = release
    try:
        errors = parallel(hosts, lambda h: prepare(h, archive, wheels))
    except BaseException:
        for host in hosts:
            fail_before_swap(host, archive.revision)
        raise
    if errors:
        for host in hosts:
            fail_before_swap(host, archive.revision)
        details = "\n".join(f"{name}: {exc}" for name, exc in errors.items())
        raise DeployError(f"deploy of {release} failed before the swap; current is unchanged "
                          f"on every host:\n{details}")
    outcome = fleet.publish_all(hosts, archive, hosts[0].config, hosts[0].reporter)
    finishing = [host for host in hosts if host.locked]
    errors = parallel(finishing, finish)
    if not outcome.ok:
        raise DeployError(outcome.summary(release))
    if errors:
        details = "\n".join(f"{name}: {exc}" for name, exc in errors.items())
        raise DeployError(f"{release} is live, but finishing failed:\n{details}")
    total = time.monotonic() - started
    if outcome.failed:
        hosts[0].reporter.line(outcome.summary(release))
    for host in outcome.published:
        host.say(f"deployed {release} in {total:.1f}s")


def rollback(host: Host, target: str | None) -> str:
    """Point `current` at `target` (default: the previous good release) and restart onto it,
    on the host (put back there on failure). Returns the release now current."""
    host.stage("lock", "take the deploy lock",
               lambda: stage_lock(host, f"rolling back to {target or 'previous good'}"))
    try:
        found = rel.read_inventory(host.remote, host.paths)
        inventory = found.releases
        by_name = {r.name: r for r in inventory}
        host.previous = found.current
        if target:
            chosen = by_name.get(target)
            if chosen is None or chosen.state != rel.GOOD:
                state = chosen.state if chosen else "not found"
                raise DeployError(f"[{host.name}] cannot roll back to {target}: {state}")
        else:
            chosen = rel.previous_good(inventory)
            if chosen is None:
                raise DeployError(f"[{host.name}] no good release older than "
                                  f"{host.previous or 'current'} to roll back to")
        host.release = chosen.name
        host.stage("publish", f"current -> releases/{chosen.name}, restart, health (on the host)",
                   lambda: stage_publish(host, "rollback", chosen.name, chosen.revision))
        return chosen.name
    finally:
        stage_unlock(host)
