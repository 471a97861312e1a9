"""The deploy's stages: the STAGES table, from which every flow is derived.

Each row is a stage (name, one-line summary, function of the Host, the flows it belongs
to); a flow runs its rows in table order (host.run). The flows, after Capistrano's framework
list (deploy = updating, publishing, finishing; rollback = reverting, publishing, finishing):

    setup     `fab setup`, as root: accounts, layout, wheels, server venv, env, placeholder,
              unit, start, nginx (setup.py)
    deploy    prepare (every host in parallel; none publishes before all are prepared),
              then publish (on the host, detached from SSH: publish.py; hosts in parallel,
              in batches after optional canary hosts: fleet.py), then finish
    rollback  lock, pick, publish (of a good release), unlock
    revert    a published host back on its previous release (a canary that failed its
              watch, a fleet over its failure budget)
    restart   the `restart` task

The stage functions: setup.py (setup's), prepare.py (lock ... hooks, unlock), publishing.py
(publish, revert, pick, restart: `fab`'s side of publish.py), nginx here (setup and finish).
`python -m railcar.deploy.pipeline` prints the table as the README's stage list
(tests/test_deploy_units.py checks that they agree).

A failure before the publish leaves `current` untouched on every host and marks the release
failed (a release that cannot even be marked, on a full disk, is removed). A failure after
the swap is undone on the host by the publish itself, which goes on even if `fab` dies. A
failure that is a full disk is reported as such (disk.py). Failed releases are never
rollback targets and don't count against keep_releases.
"""

from __future__ import annotations

import getpass
import posixpath
import time

from . import nginx, setup
from . import releases as rel
from .build import Archive
from .host import DeployError, Host, PublishError, Reporter, Stage, parallel, run
from .paths import VENV_DONE
from .prepare import (stage_check, stage_env, stage_hooks, stage_link, stage_lock, stage_unlock,
                      stage_unpack, stage_upload, stage_venv, tarball)
from .publishing import stage_pick, stage_publish, stage_restart, stage_revert

__all__ = ["STAGES", "DeployError", "Host", "PublishError", "Reporter", "deploy", "parallel",
           "publish", "revert", "rollback", "setup_hosts"]


# --- finish ---------------------------------------------------------------------------------
def installs_nginx(host: Host) -> bool:
    """Only root writes under /etc: setup (as root) installs the site, a deploy run as root
    too; a deploy account only checks it is up to date."""
    return host.root is not None or host.remote.login == "root"


def stage_nginx(host: Host) -> str:
    return nginx.ensure_nginx_site(host.root or host.remote, host.paths, host.config,
                                   install=installs_nginx(host))


# --- the table ------------------------------------------------------------------------------
SETUP, DEPLOY, ROLLBACK, REVERT, RESTART = "setup", "deploy", "rollback", "revert", "restart"
PREPARE, PUBLISH, FINISH = "prepare", "publish", "finish"     # the deploy's phases
FLOWS = {                               # flow -> its phases (a phase is a flow of its own)
    SETUP: (SETUP,), DEPLOY: (PREPARE, PUBLISH, FINISH), ROLLBACK: (ROLLBACK,),
    REVERT: (REVERT,), RESTART: (RESTART,)}


def _nginx_enabled(host: Host) -> bool:
    return bool(host.config.nginx["enabled"])


STAGES: tuple[Stage, ...] = (
    Stage("accounts", "create the app account and its group; the deploy account joins it",
          setup.stage_accounts, (SETUP,)),
    Stage("layout", "the directories under deploy_to, their owners and modes",
          setup.stage_layout, (SETUP,)),
    Stage("wheels", "upload railcar's wheel (and the wheelhouse) where the host lacks it",
          setup.stage_wheels, (SETUP,)),
    Stage("server", "the server virtualenv deploy_to/railcar with this railcar",
          setup.stage_server, (SETUP,)),
    Stage("lock", "take the deploy lock (a stale one is taken over)",
          stage_lock, (PREPARE, ROLLBACK)),
    Stage("check", "host set up, this railcar, shared files present, server running",
          stage_check, (PREPARE,)),
    Stage("upload", "upload the release and the wheels the host lacks",
          stage_upload, (PREPARE,)),
    Stage("unpack", "unpack into releases/NAME with a REVISION file",
          stage_unpack, (PREPARE,)),
    Stage("link", "link shared dirs and files into the release",
          stage_link, (PREPARE,)),
    Stage("env", "write the app's env file (env, secrets), 0600 the app account's",
          stage_env, (SETUP, PREPARE), when=lambda host: host.env_changed),
    Stage("current", "a release, or the placeholder answering 503",
          setup.stage_placeholder, (SETUP,)),
    Stage("service", "the systemd unit, or a daemon (railcar start --daemon)",
          setup.stage_unit, (SETUP,)),
    Stage("start", "start the server as the app account unless it runs",
          setup.stage_start, (SETUP,)),
    Stage("venv", "build or reuse the virtualenv keyed by the requirements' hash",
          stage_venv, (PREPARE,)),
    Stage("hooks", "run the hooks in the release (migrations...)",
          stage_hooks, (PREPARE,)),
    Stage("pick", "the release to go back to: the one named, else the previous good one",
          stage_pick, (ROLLBACK,)),
    Stage("publish", "swap, restart, health, mark on the host, detached from SSH",
          stage_publish, (PUBLISH, ROLLBACK)),
    Stage("revert", "back to the previous release on the host (the new one marked failed)",
          stage_revert, (REVERT,)),
    Stage("restart", "rolling restart via the admin socket",
          stage_restart, (RESTART,)),
    Stage("nginx", "the nginx site: render; as root install if changed, test, reload",
          stage_nginx, (SETUP, FINISH), when=_nginx_enabled),
    Stage("unlock", "release the deploy lock",
          stage_unlock, (FINISH, ROLLBACK), when=lambda host: host.locked, always=True),
)


def stages_of(flow: str) -> list[Stage]:
    """The rows of a flow (or a deploy phase), in the order they run."""
    phases = FLOWS.get(flow, (flow,))
    return [stage for phase in phases for stage in STAGES if phase in stage.flows]


def markdown() -> str:
    """The README's stage list, derived from the table: each flow's stages in order, then
    what each stage does."""
    lines = [f"- `{flow}`" + (f" ({', then '.join(phases)})" if len(phases) > 1 else "")
             + ": " + ", ".join(f"**{s.name}**" for s in stages_of(flow))
             for flow, phases in FLOWS.items()]
    lines += ["", "| stage | what it does |", "|---|---|"]
    lines += [f"| {s.name} | {s.summary} |" for s in STAGES]
    return "\n".join(lines) + "\n"


# --- recovery -------------------------------------------------------------------------------
def revision_line(host: Host, event: str, revision: str = "") -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{when} {event} {host.release} revision {revision or '-'} by {getpass.getuser()}"


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


def fail_before_swap(host: Host) -> None:
    """Mark the release failed (or remove it when it cannot be marked) and unlock; `current`
    was never touched. Never raises: the deploy's own error is what the user must see."""
    try:
        mark_failed(host)
    finally:
        if host.locked:
            try:
                stage_unlock(host)
            except Exception as exc:
                host.say(f"could not drop the deploy lock: {exc}")


def mark_failed(host: Host) -> None:
    """Mark the release failed, or remove it when it cannot be marked; never raises."""
    try:
        if host.release and (host.unpacked or "upload" in host.timings):
            release = host.release_dir
            done = host.remote.script(FAIL, release, posixpath.join(release, rel.STATE_FILE),
                                      tarball(host), host.paths.revisions_log,
                                      revision_line(host, "failed", host.revision),
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


# --- the runs -------------------------------------------------------------------------------
def setup_hosts(hosts: list[Host], wheels: list[str]) -> dict[str, Exception]:
    """`fab setup` on every host at once; the errors by host name."""
    def one(host: Host) -> None:
        setup.prepare(host, wheels)
        run(host, STAGES, SETUP)
    return parallel(hosts, one)


def publish(host: Host) -> None:
    """Publish the prepared release on the host (swap, restart, health, mark; undone there
    on failure)."""
    try:
        run(host, STAGES, PUBLISH)
    except PublishError as exc:
        if not exc.changed:     # refused before the swap: the release was never marked
            mark_failed(host)
        raise


def revert(host: Host, reason: str) -> None:
    """Put a host that published the release back on its previous release (the release is
    marked failed); for a canary that failed its watch or a fleet over its failure budget."""
    if not host.previous:
        host.say("no previous release to go back to: left on the new release")
        return
    host.reason = reason
    run(host, STAGES, REVERT)


def finish(host: Host) -> None:
    """After the publish (which also cleaned up, on the host): the nginx site, unlock."""
    run(host, STAGES, FINISH)


def deploy(hosts: list[Host], archive: Archive, wheels: list[str], release: str) -> None:
    """Run the pipeline on every host. Raises DeployError; hosts are left consistent."""
    from . import fleet

    started = time.monotonic()
    for host in hosts:
        host.kind, host.release, host.revision = "deploy", release, archive.revision
        host.archive, host.wheels = archive, wheels
        host.purpose = f"deploying {archive.ref} ({archive.short})"
    try:
        errors = parallel(hosts, lambda h: run(h, STAGES, PREPARE))
    except BaseException:
        for host in hosts:
            fail_before_swap(host)
        raise
    if errors:
        for host in hosts:
            fail_before_swap(host)
        details = "\n".join(f"{name}: {exc}" for name, exc in errors.items())
        raise DeployError(f"deploy of {release} failed before the swap; current is unchanged "
                          f"on every host:\n{details}")
    outcome = fleet.publish_all(hosts, hosts[0].config, hosts[0].reporter)
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
    host.kind, host.release = "rollback", target
    host.purpose = f"rolling back to {target or 'previous good'}"
    run(host, STAGES, ROLLBACK)
    return host.release


if __name__ == "__main__":
    print(markdown(), end="")
