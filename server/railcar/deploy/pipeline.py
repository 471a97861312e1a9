"""The deploy pipeline: named, short, idempotent stages run on every host.

    prepare  (every host, in parallel; no host swaps before all are prepared)
      lock     take the deploy lock (a stale one is detected and taken over)
      check    the host is set up, runs this railcar version, has the shared files
      upload   the release tarball and any wheel the host lacks
      unpack   into releases/<UTC timestamp>-<short sha>/ with a REVISION file
      link     shared dirs and files into the release
      venv     build or reuse the virtualenv keyed by the requirements' hash
      hooks    run the configured commands in the release (migrations...)
    publish  (host by host)
      swap     point `current` at the release: symlink to a temp name, rename over
      restart  rolling restart through the admin socket (or start the server)
      health   GET health_path through the app's socket; every worker on the release
      mark     mark the release good, append to the revisions log
    finish   (every host)
      cleanup  keep keep_releases good releases, drop failed/incomplete ones and unused venvs
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

from . import lock as locks
from . import releases as rel
from . import service, venvs
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


def stage_check(host: Host, wheel_name: str) -> str:
    remote, paths, config = host.remote, host.paths, host.config
    if not remote.exists(paths.server_python):
        raise DeployError(f"[{host.name}] {paths.server_python} is missing: run `fab setup` first")
    installed = (remote.read(posixpath.join(paths.server_venv, ".railcar-wheel")) or "").strip()
    if installed != wheel_name:
        raise DeployError(f"[{host.name}] the server venv has {installed or 'no railcar'}, "
                          f"this deploy ships {wheel_name}: run `fab setup` first")
    missing = [f for f in config.shared_files
               if not remote.exists(posixpath.join(paths.shared, f))]
    if missing:
        raise DeployError(f"[{host.name}] shared files missing in {paths.shared}: "
                          f"{', '.join(missing)} (railcar.shared_files)")
    host.previous = rel.current_name(remote, paths)
    return f"current: {host.previous or '(none)'}"


def stage_upload(host: Host, archive: Archive, wheels: list[str]) -> str:
    sent = service.upload_wheels(host.remote, host.paths, wheels)
    target = posixpath.join(host.paths.tmp, f"{host.release}.tar.gz")
    host.remote.put(archive.path, target)
    size = os.path.getsize(archive.path)
    return f"{size / 1024:.0f} KiB" + (f", wheels: {', '.join(sent)}" if sent else "")


def stage_unpack(host: Host, archive: Archive) -> str:
    remote, paths = host.remote, host.paths
    tarball = posixpath.join(paths.tmp, f"{host.release}.tar.gz")
    remote.run(["rm", "-rf", host.release_dir])
    remote.run(["mkdir", "-p", host.release_dir])
    host.unpacked = True
    remote.run(["tar", "-xzf", tarball, "-C", host.release_dir])
    remote.write(posixpath.join(host.release_dir, "REVISION"), archive.revision + "\n")
    remote.run(["rm", "-f", tarball])
    return host.release_dir


def stage_link(host: Host) -> str:
    remote, paths, config = host.remote, host.paths, host.config
    for item in config.shared_dirs + config.shared_files:
        is_dir = item in config.shared_dirs
        source = posixpath.join(paths.shared, item)
        target = posixpath.join(host.release_dir, item)
        if is_dir:
            remote.run(["mkdir", "-p", source])
        remote.run(["mkdir", "-p", posixpath.dirname(target)])
        remote.run(["rm", "-rf", target])
        remote.run(["ln", "-s", source, target])
    return f"{len(config.shared_dirs)} dir(s), {len(config.shared_files)} file(s)"


def stage_venv(host: Host, wheel_name: str) -> str:
    key, reused = venvs.ensure(host.remote, host.paths, host.config, host.release_dir,
                               wheel_name)
    return f"{'reused' if reused else 'built'} venvs/{key}"


def hook_env(host: Host) -> dict[str, str]:
    venv_bin = posixpath.join(host.release_dir, ".venv", "bin")
    return {**host.config.env, "VIRTUAL_ENV": posixpath.join(host.release_dir, ".venv"),
            "PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
            "RAILCAR_RELEASE": host.release_dir, "RAILCAR_SHARED": host.paths.shared}


def stage_hooks(host: Host) -> str:
    for argv in host.config.hooks:
        host.remote.run(argv, cwd=host.release_dir, env=hook_env(host))
    return f"{len(host.config.hooks)} hook(s)"


def swap_current(remote: Remote, paths: Paths, release_dir: str) -> None:
    """Atomic publish: a symlink under a temporary name, renamed over `current`."""
    temp = f"{paths.current}.tmp"
    remote.run(["rm", "-f", temp])
    remote.run(["ln", "-s", release_dir, temp])
    remote.run(["mv", "-T", "-f", temp, paths.current])


def stage_swap(host: Host) -> str:
    swap_current(host.remote, host.paths, host.release_dir)
    host.swapped = True
    return f"current -> releases/{host.release}"


def stage_restart(host: Host) -> str:
    output = service.restart(host.remote, host.paths, host.config).strip()
    return output.splitlines()[-1] if output else ""


def stage_health(host: Host) -> str:
    return service.health_check(host.remote, host.paths, host.config, host.release_dir)


def log_revision(host: Host, event: str, revision: str = "") -> None:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    user = getpass.getuser()
    host.remote.append(host.paths.revisions_log,
                       f"{when} {event} {host.release} revision {revision or '-'} by {user}")


def stage_mark(host: Host, revision: str) -> str:
    rel.mark(host.remote, host.paths, host.release, rel.GOOD)
    log_revision(host, "deployed", revision)
    return f"good; {host.paths.revisions_log}"


def stage_cleanup(host: Host) -> str:
    remote, paths = host.remote, host.paths
    inventory = rel.inventory(remote, paths)
    doomed = rel.to_remove(inventory, host.config.keep_releases, protect={host.release})
    if doomed:
        remote.run(["rm", "-rf", *(paths.release(release.name) for release in doomed)])
    kept = [r.name for r in inventory if r not in doomed]
    removed_venvs = venvs.cleanup(remote, paths, venvs.in_use(remote, paths, kept))
    remote.run(["find", paths.tmp, "-mindepth", "1", "-delete"], check=False)
    return (f"kept {len(kept)}, removed {len(doomed)} release(s)"
            + (f" and {len(removed_venvs)} venv(s)" if removed_venvs else ""))


def stage_unlock(host: Host) -> str:
    locks.release(host.remote, host.paths)
    host.locked = False
    return ""


# --- recovery -------------------------------------------------------------------------------
def fail_before_swap(host: Host, revision: str) -> None:
    """Mark the release failed (if it exists) and unlock; `current` was never touched."""
    try:
        if host.unpacked:
            rel.mark(host.remote, host.paths, host.release, rel.FAILED)
            log_revision(host, "failed", revision)
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
        rel.mark(remote, paths, host.release, rel.FAILED)
        log_revision(host, "failed", revision)
    finally:
        if host.locked:
            stage_unlock(host)


# --- the run --------------------------------------------------------------------------------
def prepare(host: Host, archive: Archive, wheels: list[str]) -> None:
    wheel_name = os.path.basename(wheels[0])
    host.stage("lock", "take the deploy lock",
               lambda: stage_lock(host, f"deploying {archive.ref} ({archive.short})"))
    host.stage("check", "host set up, shared files present", lambda: stage_check(host, wheel_name))
    host.stage("upload", "upload release and missing wheels",
               lambda: stage_upload(host, archive, wheels))
    host.stage("unpack", f"unpack into releases/{host.release}", lambda: stage_unpack(host, archive))
    host.stage("link", "link shared dirs and files", lambda: stage_link(host))
    host.stage("venv", "build or reuse the virtualenv", lambda: stage_venv(host, wheel_name))
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
        inventory = rel.inventory(host.remote, host.paths)
        by_name = {r.name: r for r in inventory}
        host.previous = rel.current_name(host.remote, host.paths)
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
