"""Host-side publish: swap, restart, health, mark, and the rollback of a failure, run ON THE
HOST as one operation that no SSH session or `fab` process can interrupt.

    DEPLOY_TO/railcar/bin/python -m railcar.deploy.publish SPEC_JSON

`fab` starts this through SSH with the server venv's python (the same railcar version as the
deploy: the check stage made sure of it). It takes an flock on the deploy lock's holder file
(deploy.lock/holder), forks, and the child leaves the SSH session (setsid, stdin from
/dev/null, SIGHUP/SIGINT/SIGPIPE ignored) and does the work while holding that flock; the
parent only relays the child's progress lines to its stdout (what `fab` shows) and exits with
the child's status. If `fab` or the connection dies, the parent dies of a broken pipe and the
child carries on to the end. A later deploy that finds the lock of a dead `fab` waits for the
flock before taking the lock over (lock.py), so it never races a publish in progress.

The operation, for the release TARGET ("kind" deploy: a new release; rollback: a good one):
    resolve  a release left "publishing" by a publish that died without an outcome (a reboot,
             a SIGKILL: this process holds the flock, so no other publish runs) is marked
             "good" if it is `current` and its health check passes (the workers serve it),
             else "failed"; when `current` names one that failed, the newest good release
             is what a failure of this publish restores
    state    TARGET/.railcar-state := publishing (deploy only; also reserves its disk block)
    swap     `current` -> TARGET (symlink under a temp name, renamed over)
    restart  the rolling restart through the admin socket (blocks until done), or the start
             command fab passed when no master answers
    health   railcar.deploy.probe: health_path answers, every worker runs TARGET
    mark     TARGET good (deploy), ABANDON failed (a revert), a line in revisions.log
    cleanup  (deploy) keep_releases good releases (releases.to_remove), unused venvs, tmp/
On a failure after the swap it puts `current` back to what it was, restarts onto it and marks
a deploy's TARGET failed (the first release: removes `current`, stops the server).
Outcome: TARGET/.railcar-state, revisions.log, and every progress line in
TARGET/.railcar-publish.log (writes there are best effort: a full disk must not stop a
publish); the last line is "outcome good" or "outcome failed: REASON".
Exit status: 0 published; 1 failed and restored; 2 failed and the restore failed too;
3 refused before changing anything (another publish runs, bad spec, state not writable).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import posixpath
import shutil
import signal
import sys
import time

from . import probe
from . import releases as rel
from .paths import PUBLISH_LOG, STATE_FILE, VENV_LINK, Paths
from .venvs import unused

PUBLISHED, RESTORED, BROKEN, REFUSED = 0, 1, 2, 3
COMMAND_TIMEOUT = 3600      # bound on one restart/stop command (they have their own timeouts)
RESOLVE_TIMEOUT = 5         # seconds the health check of an interrupted current release takes
LOCK_WAIT = 2.0             # seconds to wait for the holder's flock: a reader (LIST_SCRIPT)
#                             holds a shared one for an instant


class Refused(Exception):
    """Nothing was changed: the publish cannot start."""


class Failed(Exception):
    """A step after the swap failed; the message is the reason."""


def _no_space(exc: OSError, path: str) -> str:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device: {path}"
    return f"{path}: {exc.strerror or exc}"


class Progress:
    """Progress lines to the parent's pipe and to the release's publish log. Both are best
    effort: a parent that died (EPIPE) or a full disk only loses the copy."""

    def __init__(self, pipe_fd: int | None, log_path: str | None):
        self.pipe_fd = pipe_fd
        self.log = None
        if log_path:
            try:
                self.log = open(log_path, "a", buffering=1)
            except OSError:
                self.log = None

    def line(self, text: str) -> None:
        data = text.rstrip("\n") + "\n"
        if self.pipe_fd is not None:
            try:
                os.write(self.pipe_fd, data.encode())
            except OSError:         # fab or the connection is gone: carry on without it
                self.pipe_fd = None
        if self.log is not None:
            try:
                self.log.write(data)
            except OSError:
                self.log = None

    def stage(self, name: str, description: str, action) -> str:
        self.line(f"{name:<8} {description} ...")
        started = time.monotonic()
        try:
            detail = action() or ""
        except BaseException as exc:
            self.line(f"{name:<8} FAILED after {time.monotonic() - started:.1f}s")
            for text in str(exc).splitlines()[-40:]:
                self.line(f"         {text}")
            raise
        self.line(f"{name:<8} ok {time.monotonic() - started:.1f}s"
                  + (f"  {detail}" if detail else ""))
        return detail


def set_state(release_dir: str, state: str) -> None:
    """Write a release's state. An existing state file is overwritten in place (pwrite +
    ftruncate: no new disk block, so marking works on a full disk once `publishing` reserved
    the file); a missing one is written under a temp name and renamed."""
    path = posixpath.join(release_dir, STATE_FILE)
    data = (state + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        temp = path + ".tmp"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temp, path)
        return
    try:
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def read_current(paths: Paths) -> str | None:
    try:
        return posixpath.basename(os.readlink(paths.current).rstrip("/")) or None
    except OSError:
        return None


def swap(paths: Paths, release_dir: str) -> None:
    """Atomic: a symlink under a temp name renamed over `current`."""
    temp = f"{paths.current}.tmp"
    try:
        os.unlink(temp)
    except FileNotFoundError:
        pass
    os.symlink(release_dir, temp)
    os.replace(temp, paths.current)


def run_command(argv: list[str]) -> str:
    """Run a service command; its output, or Failed with it."""
    import subprocess   # here: only a server that is down needs it, and every host starts
    #                     this interpreter on every deploy
    try:
        result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=COMMAND_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Failed(f"{argv[3] if len(argv) > 3 else argv[0]} did not end in "
                     f"{COMMAND_TIMEOUT} s") from None
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0:
        raise Failed(output or f"exit status {result.returncode}")
    return output


def log_revision(paths: Paths, progress: Progress, line: str) -> None:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        with open(paths.revisions_log, "a") as handle:
            handle.write(f"{when} {line}\n")
    except OSError as exc:
        progress.line(f"warning  revisions.log not written: {_no_space(exc, paths.revisions_log)}")


class Publish:
    """One publish on this host, from a spec written by the deploy side (pipeline.py)."""

    def __init__(self, spec: dict, progress: Progress):
        self.spec = spec
        self.paths = Paths(spec["root"])
        self.target = spec["target"]
        self.target_dir = self.paths.release(self.target)
        self.kind = spec["kind"]
        self.abandon = spec.get("abandon")
        self.progress = progress
        self.previous = read_current(self.paths)
        self.failure = ""

    def who(self, event: str, name: str) -> str:
        revision = self.spec.get("revision") or "-"
        return f"{event} {name} revision {revision} by {self.spec.get('by', '-')}"

    def run(self) -> int:
        if not os.path.isdir(self.target_dir):
            raise Refused(f"{self.target_dir} does not exist")
        self.resolve_interrupted()
        if self.kind == "deploy":
            try:
                set_state(self.target_dir, "publishing")
            except OSError as exc:
                raise Refused(f"{_no_space(exc, self.target_dir)}; current unchanged") from None
        try:
            self.publish()
        except Exception as exc:
            status = self.restore(exc)
        else:
            status = PUBLISHED
        if self.kind == "deploy" and status != BROKEN:
            try:
                self.progress.stage("cleanup", f"keep {self.spec.get('keep', 5)} good releases",
                                    self.cleanup)
            except Exception:   # reported; the publish itself is done
                pass
        self.progress.line("outcome good" if status == PUBLISHED else self.failure)
        return status

    def resolve_interrupted(self) -> None:
        """Mark the releases an earlier publish left "publishing" (see the module doc)."""
        found = inventory(self.paths)
        stuck = [r for r in found.releases if r.state == rel.PUBLISHING and r.name != self.target]
        for release in stuck:
            healthy = release.current and self.healthy(self.paths.release(release.name))
            state = rel.GOOD if healthy else rel.FAILED
            try:
                set_state(self.paths.release(release.name), state)
            except OSError as exc:
                self.progress.line(f"warning  {release.name} left publishing: "
                                   f"{_no_space(exc, release.name)}")
                continue
            self.progress.line(f"resolve  {release.name}: its publish was interrupted; marked "
                               f"{state}" + (" (current, healthy)" if healthy else
                                             " (current, unhealthy)" if release.current else ""))
            log_revision(self.paths, self.progress,
                         f"interrupted {release.name} marked {state} by {self.spec.get('by', '-')}")
            if release.current and not healthy:
                good = [r.name for r in found.releases if r.state == rel.GOOD
                        and r.name not in (release.name, self.target)]
                self.previous = good[-1] if good else self.previous

    def healthy(self, release_dir: str) -> bool:
        """The health check of the publish, for another release, briefly."""
        args = probe.parser().parse_args(self.spec["probe"])
        args.release, args.timeout = release_dir, min(args.timeout, RESOLVE_TIMEOUT)
        return probe.wait_healthy(args) is None

    def publish(self) -> None:
        p = self.progress
        p.stage("swap", "point current at the release", self.do_swap)
        p.stage("restart", "rolling restart via the admin socket", self.restart)
        p.stage("health", f"GET {self.spec.get('health_path', '/')} via the app socket",
                self.do_health)
        p.stage("mark", "mark good, log the revision", self.do_mark)

    def restart(self) -> str:
        """The rolling restart, through the admin socket from this process (what `railcar
        restart APP` does, without two more interpreters starting); when no master answers
        there, the service's own command (it starts the server)."""
        from ..control.client import ControlError, call

        admin, app = self.spec.get("admin_socket"), self.spec.get("app")
        if not (admin and app and os.path.exists(admin)):
            return self.service_restart()
        said: list[str] = []
        try:
            result = call(admin, "restart", app=app, on_progress=said.append)
        except ControlError as exc:
            if str(exc).startswith(("no railcar master", "cannot reach the railcar master")):
                return self.service_restart()
            raise Failed("\n".join([*said[-20:], *([exc.detail] if exc.detail else []),
                                    f"Error: {exc}"])) from None
        done = [a for a in result.get("apps", []) if a.get("name") == app] or [{}]
        return f"{app}: restarted, release {done[0].get('release', '?')}"

    def service_restart(self) -> str:
        """The service's restart command (it starts the server): its last line of output."""
        return (run_command(self.spec["restart"]).splitlines() or [""])[-1]

    def do_swap(self) -> str:
        swap(self.paths, self.target_dir)
        return f"current -> releases/{self.target}"

    def do_health(self) -> str:
        args = probe.parser().parse_args(self.spec["probe"])
        problem = probe.wait_healthy(args)
        if problem:
            raise Failed(problem)
        return f"healthy: GET {args.path} answered"

    def do_mark(self) -> str:
        if self.kind == "deploy":
            try:
                set_state(self.target_dir, "good")
            except OSError as exc:
                raise Failed(_no_space(exc, posixpath.join(self.target_dir, STATE_FILE))) from None
            log_revision(self.paths, self.progress, self.who("deployed", self.target))
            return f"good; {self.paths.revisions_log}"
        if self.abandon:
            self.mark_failed(self.abandon)
        log_revision(self.paths, self.progress,
                     self.who(f"rolled back from {self.previous} to", self.target)
                     + (f" ({self.spec['reason']})" if self.spec.get("reason") else ""))
        return f"current: {self.target}"

    def mark_failed(self, name: str) -> None:
        try:
            set_state(self.paths.release(name), "failed")
        except OSError as exc:
            self.progress.line(f"warning  {name} not marked failed: {_no_space(exc, name)}")

    def restore(self, cause: Exception) -> int:
        """Put `current` back, restart onto it, mark a deploy's release failed."""
        p = self.progress
        reason = str(cause).strip().splitlines()
        reason = reason[-1] if reason else type(cause).__name__
        status = RESTORED
        try:
            if self.previous and self.previous != self.target:
                p.stage("restore", f"current -> releases/{self.previous}, restart onto it",
                        self.put_back)
            elif not self.previous:
                p.stage("restore", "first release failed: remove current, stop the server",
                        self.remove_current)
        except Exception:
            status = BROKEN
        if self.kind == "deploy":
            self.mark_failed(self.target)
            log_revision(self.paths, p, self.who("failed", self.target))
        self.failure = f"outcome failed: {reason}"
        return status

    def cleanup(self) -> str:
        """What the cleanup stage of pipeline.py did from `fab`, here: keep `keep` good
        releases (never current, the previous good one or this one), drop failed and
        incomplete ones, the venvs no kept release uses, and tmp/'s contents."""
        found = inventory(self.paths)
        doomed = rel.to_remove(found.releases, int(self.spec.get("keep", 5)),
                               protect={self.target})
        kept = [r for r in found.releases if r not in doomed]
        gone_venvs = unused(found.venvs, {r.venv for r in kept if r.venv})
        for path in [self.paths.release(r.name) for r in doomed] + \
                [self.paths.venv(key) for key in gone_venvs]:
            shutil.rmtree(path, ignore_errors=True)
        for name in os.listdir(self.paths.tmp) if os.path.isdir(self.paths.tmp) else []:
            target = self.paths.inside(posixpath.join(self.paths.tmp, name))
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                os.unlink(target)
        return (f"kept {len(kept)}, removed {len(doomed)} release(s)"
                + (f" and {len(gone_venvs)} venv(s)" if gone_venvs else ""))

    def put_back(self) -> str:
        swap(self.paths, self.paths.release(self.previous))
        return self.restart()

    def remove_current(self) -> str:
        try:
            os.unlink(self.paths.current)
        except FileNotFoundError:
            pass
        run_command(self.spec["stop"])
        return "current removed, server stopped"


def inventory(paths: Paths) -> rel.Inventory:
    """releases.read_inventory's answer, read here on the host without a round trip."""
    current = read_current(paths)
    releases = []
    names = sorted(os.listdir(paths.releases)) if os.path.isdir(paths.releases) else []
    for name in names:
        directory = paths.release(name)
        if not os.path.isdir(directory) or os.path.islink(directory):
            continue
        state = rel.known_state(_first_line(posixpath.join(directory, STATE_FILE)))
        try:
            venv = posixpath.basename(os.readlink(posixpath.join(directory, VENV_LINK)))
        except OSError:
            venv = ""
        releases.append(rel.Release(name, state, int(os.stat(directory).st_mtime),
                                    _first_line(posixpath.join(directory, "REVISION")),
                                    name == current, venv))
    venvs = sorted(name for name in os.listdir(paths.venvs)
                   if os.path.isdir(posixpath.join(paths.venvs, name))) \
        if os.path.isdir(paths.venvs) else []
    return rel.Inventory(current, releases, venvs)


def _first_line(path: str) -> str:
    try:
        with open(path, errors="replace") as handle:
            return handle.readline(200).strip()
    except OSError:
        return ""


def lock_holder(paths: Paths) -> int:
    """Open and flock deploy.lock/holder: held for the whole publish, it tells a later deploy
    that this publish is still running (lock.py waits for it)."""
    holder = posixpath.join(paths.lock, "holder")
    try:
        fd = os.open(holder, os.O_RDONLY)
    except OSError as exc:
        raise Refused(f"the deploy lock {paths.lock} is not held ({exc.strerror})") from None
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise Refused("another publish is running on this host") from None
            time.sleep(0.05)


def detach_and_publish(spec: dict, pipe_fd: int) -> int:
    """In the child: leave the SSH session, then publish."""
    os.setsid()
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    paths = Paths(spec["root"])
    log_path = posixpath.join(paths.release(spec["target"]), PUBLISH_LOG)
    progress = Progress(pipe_fd, log_path)
    try:
        return Publish(spec, progress).run()
    except Refused as exc:
        progress.line(f"outcome refused: {exc}")
        return REFUSED
    except Exception as exc:   # a bug: say so rather than vanish without an outcome
        progress.line(f"outcome failed: unexpected {type(exc).__name__}: {exc}")
        return BROKEN


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        spec = json.loads(argv[0])
        paths = Paths(spec["root"])
        paths.release(spec["target"])
        lock_fd = lock_holder(paths)
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        print(f"outcome refused: bad publish spec: {exc}", flush=True)
        return REFUSED
    except Refused as exc:
        print(f"outcome refused: {exc}", flush=True)
        return REFUSED
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        code = REFUSED
        try:
            code = detach_and_publish(spec, write_fd)
        finally:
            os._exit(code)
    os.close(write_fd)
    os.close(lock_fd)           # the child holds the flock (same open file description)
    print(f"publish  host-side pid {pid}", flush=True)
    with os.fdopen(read_fd, "rb") as pipe:
        for raw in pipe:
            sys.stdout.write(raw.decode("utf-8", "replace"))
            sys.stdout.flush()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else BROKEN


if __name__ == "__main__":
    sys.exit(main())
