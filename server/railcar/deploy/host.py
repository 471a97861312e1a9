"""One host's part of a run, and how a stage runs on it.

A stage is a row of the STAGES table (pipeline.py): a name, a one-line summary, a function
of the Host returning a short detail, and the flows it belongs to. `run(host, flow)` runs
the flow's rows on the host in table order, each printed as `[host] name     summary ...`
then `ok 1.2s  detail` or `FAILED after 1.2s`; a failure stops the flow after the rows
marked `always` (unlock) have run, and a full disk is reported as such (disk.py). The Host
carries what the stages share: the run's release, archive and wheels, what the check stage
found, whether it holds the lock.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from . import disk
from .paths import Paths
from .remote import Remote
from .settings import DeployConfig

if TYPE_CHECKING:
    from .build import Archive
    from .facts import Facts


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
    """One host's part of a setup, deploy, rollback or restart."""

    remote: Remote                      # as the SSH user
    config: DeployConfig
    reporter: Reporter
    env: dict[str, str] = field(default_factory=dict)  # the app's env (env + secrets)
    # what a deploy or rollback works on
    kind: str = "deploy"                # what the publish does: "deploy" or "rollback"
    release: str | None = None          # the release being published
    revision: str = ""                  # its revision (git sha)
    purpose: str = ""                   # the lock holder's "what"
    archive: Archive | None = None      # the release tarball (deploy)
    wheels: list[str] = field(default_factory=list)   # the run's wheels (railcar's first)
    # what the stages found and did
    previous: str | None = None         # what `current` pointed to before the publish
    facts: Facts | None = None          # what the check stage found
    env_changed: bool = False           # the env file must be written (check found; setup)
    swapped: bool = False
    unpacked: bool = False
    locked: bool = False
    reason: str = ""                    # why a published host is put back (revert)
    # setup's accounts (None: the SSH user)
    root: Remote | None = None          # as root: installs under /etc (setup, or a root login)
    deployer: Remote | None = None      # as the deploy account
    systemd: bool | None = None         # the host runs systemd (setup asks once)
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

    @property
    def as_deployer(self) -> Remote:
        return self.deployer or self.remote

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
        if self.release and name in ("unpack", "link", "hooks", "publish"):
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


def always(host: Host) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """A row of the STAGES table."""

    name: str
    summary: str                        # one line: fab's progress and the README
    run: Callable[[Host], str | None]   # does the work; returns a short detail
    flows: tuple[str, ...]              # the flows (and deploy phases) it belongs to
    when: Callable[[Host], bool] = always   # asked when the flow reaches it
    always: bool = False                # runs even after an earlier row of its flow failed


def run(host: Host, stages: tuple[Stage, ...], flow: str) -> None:
    """Run the rows of `flow` on the host in table order (see the module doc)."""
    failure: BaseException | None = None
    for stage in stages:
        if flow not in stage.flows or (failure is not None and not stage.always):
            continue
        if not stage.when(host):
            continue
        try:
            host.stage(stage.name, stage.summary, lambda: stage.run(host))
        except BaseException as exc:
            if failure is not None:
                host.say(f"{stage.name:<8} {exc}")
                continue
            failure = exc
    if failure is not None:
        raise failure


def parallel(hosts: list[Host], action: Callable[[Host], None]) -> dict[str, Exception]:
    """Run `action` on every host at once; the errors by host name."""
    errors: dict[str, Exception] = {}

    def one(host: Host) -> None:
        try:
            action(host)
        except Exception as exc:
            errors[host.name] = exc

    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        list(pool.map(one, hosts))
    return errors
