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
    publish  (host by host)
      swap     point `current` at the release: symlink to a temp name, rename over
      restart  rolling restart through the admin socket (or start the server)
      health   GET health_path through the app's socket; every worker on the release
      mark     mark the release good, append to the revisions log
    finish   (every host)
      cleanup  keep keep_releases good releases, drop failed/incomplete ones and unused venvs
      nginx    (railcar.nginx.enabled) render the site on the host, install it if changed,
               nginx -t, reload; a failed test keeps the old site (as root; a deploy
               account only warns when it is out of date: `fab setup` installs it)
      unlock   release the lock

A failure before `swap` leaves `current` untouched on every host and marks the release
failed. A failure after it puts `current` back, restarts onto it and marks the release failed.
Failed releases are never rollback targets and don't count against keep_releases.
"""

from __future__ import annotations

import getpass
import os
import posixpath
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from . import envfile, service, venvs
from . import lock as locks
from . import releases as rel
from .build import Archive
from .paths import Paths
from .remote import Remote
from .settings import DeployConfig


class DeployError(Exception):
    """The deploy failed; the message says where and why, and what state hosts are in."""


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
    facts: service.Facts | None = None  # what the check stage found
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

    def stage(self, name: str, description: str, action: Callable[[], str | None]) -> None:
        self.say(f"{name:<8} {description} ...")
        started = time.monotonic()
        try:
            detail = action()
        except BaseException:
            self.timings[name] = time.monotonic() - started
            self.say(f"{name:<8} FAILED after {self.timings[name]:.1f}s")
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
    host.facts = known = service.facts(remote, paths, wheels, shared_files)
    if not known.server_python:
        raise DeployError(f"[{host.name}] {paths.server_python} is missing: run `fab setup` first")
    wanted = service.wheel_id(wheels[0])
    if known.installed != wanted:
        raise DeployError(f"[{host.name}] the server venv has "
                          f"{service.describe(known.installed) or 'no railcar'}, this deploy "
                          f"ships {service.describe(wanted)}: run `fab setup` first")
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
    sent = service.upload_wheels(host.remote, host.paths, wheels, host.facts)
    target = posixpath.join(host.paths.tmp, f"{host.release}.tar.gz")
    host.remote.put(archive.path, target)
    size = os.path.getsize(archive.path)
    return f"{size / 1024:.0f} KiB" + (f", wheels: {', '.join(sent)}" if sent else "")


# $1 release dir, $2 tarball, $3 revision: a fresh release dir with the tarball's files and
# a REVISION file; the tarball is removed.
UNPACK = r'''
set -e
rm -rf "$1"
mkdir -p "$1"
tar -xzf "$2" -C "$1"
printf '%s\n' "$3" > "$1/REVISION"
rm -f "$2"
'''


def stage_unpack(host: Host, archive: Archive) -> str:
    tarball = posixpath.join(host.paths.tmp, f"{host.release}.tar.gz")
    host.unpacked = True
    host.remote.script(UNPACK, host.release_dir, tarball, archive.revision, label="unpack")
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
                               archive.path, os.path.basename(wheel), service.wheel_id(wheel))
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


# $1 release dir, $2 temp link name, $3 current: symlink under the temp name, renamed over.
SWAP = r'''
rm -f "$2" && ln -s "$1" "$2" && mv -T -f "$2" "$3"
'''


def swap_current(remote: Remote, paths: Paths, release_dir: str) -> None:
    """Atomic publish: a symlink under a temporary name, renamed over `current`."""
    remote.script(SWAP, release_dir, f"{paths.current}.tmp", paths.current, label="swap-current")


def stage_swap(host: Host) -> str:
    swap_current(host.remote, host.paths, host.release_dir)
    host.swapped = True
    return f"current -> releases/{host.release}"


def stage_restart(host: Host) -> str:
    output = service.restart(host.remote, host.paths, host.config).strip()
    return output.splitlines()[-1] if output else ""


def stage_health(host: Host) -> str:
    return service.health_check(host.remote, host.paths, host.config, host.release_dir)


def revision_line(host: Host, event: str, revision: str = "") -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{when} {event} {host.release} revision {revision or '-'} by {getpass.getuser()}"


def log_revision(host: Host, event: str, revision: str = "") -> None:
    host.remote.script('printf "%s\\n" "$1" >> "$2"', revision_line(host, event, revision),
                       host.paths.revisions_log, label="log-revision")


def stage_mark(host: Host, revision: str) -> str:
    rel.mark(host.remote, host.paths, host.release, rel.GOOD,
             revision_line(host, "deployed", revision))
    return f"good; {host.paths.revisions_log}"


# $1 tmp dir; then the paths to remove.
CLEANUP = r'''
tmp=$1
shift
rm -rf "$@"
find "$tmp" -mindepth 1 -delete 2>/dev/null
true
'''


def stage_cleanup(host: Host) -> str:
    remote, paths = host.remote, host.paths
    found = rel.read_inventory(remote, paths)
    doomed = rel.to_remove(found.releases, host.config.keep_releases, protect={host.release})
    kept = [r for r in found.releases if r not in doomed]
    unused = venvs.unused(found.venvs, {r.venv for r in kept if r.venv})
    remote.script(CLEANUP, paths.tmp, *(paths.release(r.name) for r in doomed),
                  *(paths.venv(key) for key in unused), label="cleanup")
    return (f"kept {len(kept)}, removed {len(doomed)} release(s)"
            + (f" and {len(unused)} venv(s)" if unused else ""))


def stage_unlock(host: Host) -> str:
    locks.release(host.remote, host.paths)
    host.locked = False
    return ""


# --- recovery -------------------------------------------------------------------------------
def fail_before_swap(host: Host, revision: str) -> None:
    """Mark the release failed (if it exists) and unlock; `current` was never touched."""
    try:
        if host.unpacked:
            rel.mark(host.remote, host.paths, host.release, rel.FAILED,
                     revision_line(host, "failed", revision))
            host.say(f"marked releases/{host.release} failed; current unchanged "
                     f"({host.previous or 'none'})")
    finally:
        if host.locked:
            stage_unlock(host)


def fail_after_swap(host: Host, revision: str) -> None:
    """Put `current` back, restart onto it, mark the release failed, unlock."""
    remote, paths = host.remote, host.paths
    try:
        if host.previous:
            swap_current(remote, paths, paths.release(host.previous))
            host.say(f"restored current -> releases/{host.previous}; restarting onto it")
            try:
                service.restart(remote, paths, host.config)
            except Exception as exc:  # report, keep recovering: the lock must still go
                host.say(f"restart onto releases/{host.previous} failed too: {exc}")
        else:
            remote.run(["rm", "-f", paths.current])
            service.stop(remote, paths, host.config)
            host.say("first release failed: removed current, stopped the server")
        rel.mark(remote, paths, host.release, rel.FAILED,
                 revision_line(host, "failed", revision))
    finally:
        if host.locked:
            stage_unlock(host)


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
    host.stage("swap", "point current at the release", lambda: stage_swap(host))
    host.stage("restart", "rolling restart via the admin socket", lambda: stage_restart(host))
    host.stage("health", f"GET {host.config.health_path} via the app socket",
               lambda: stage_health(host))
    host.stage("mark", "mark good, log the revision", lambda: stage_mark(host, archive.revision))


def finish(host: Host) -> None:
    host.stage("cleanup", f"keep {host.config.keep_releases} good releases",
               lambda: stage_cleanup(host))
    try:
        if host.config.nginx["enabled"]:
            install = host.remote.login == "root"   # only root writes under /etc
            host.stage("nginx", f"site {service.nginx_site(host.config)}, "
                       + ("test, reload" if install else "up to date?"),
                       lambda: service.ensure_nginx_site(host.remote, host.paths, host.config,
                                                         install=install))
    finally:
        host.stage("unlock", "release the deploy lock", lambda: stage_unlock(host))


def _parallel(hosts: list[Host], action: Callable[[Host], None]) -> dict[str, BaseException]:
    errors: dict[str, BaseException] = {}

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
    started = time.monotonic()
    for host in hosts:
        host.release = release
    try:
        errors = _parallel(hosts, lambda h: prepare(h, archive, wheels))
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
    published: list[Host] = []
    for index, host in enumerate(hosts):
        try:
            publish(host, archive)
            published.append(host)
        except BaseException as exc:
            fail_after_swap(host, archive.revision) if host.swapped else \
                fail_before_swap(host, archive.revision)
            for other in hosts[index + 1:]:
                fail_before_swap(other, archive.revision)
            for done in published:
                stage_unlock(done)
            if not isinstance(exc, Exception):
                raise
            raise DeployError(
                f"deploy of {release} failed on {host.name} after the swap; current restored "
                f"there ({host.previous or 'none'})"
                + (f"; already on the new release: {', '.join(h.name for h in published)}"
                   if published else "") + f":\n{exc}") from None
    errors = _parallel(hosts, finish)
    if errors:
        details = "\n".join(f"{name}: {exc}" for name, exc in errors.items())
        raise DeployError(f"{release} is live, but finishing failed:\n{details}")
    total = time.monotonic() - started
    for host in hosts:
        host.say(f"deployed {release} in {total:.1f}s")


def rollback(host: Host, target: str | None) -> str:
    """Point `current` at `target` (default: the previous good release) and restart onto it;
    on failure put it back. Returns the release now current."""
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
        try:
            host.stage("swap", "point current at the release", lambda: stage_swap(host))
            host.stage("restart", "rolling restart via the admin socket",
                       lambda: stage_restart(host))
            host.stage("health", f"GET {host.config.health_path} via the app socket",
                       lambda: stage_health(host))
        except Exception:
            if host.swapped and host.previous:
                swap_current(host.remote, host.paths, host.paths.release(host.previous))
                service.restart(host.remote, host.paths, host.config)
                host.say(f"rollback failed; current restored to {host.previous}")
            raise
        log_revision(host, f"rolled back from {host.previous} to", chosen.revision)
        return chosen.name
    finally:
        stage_unlock(host)
