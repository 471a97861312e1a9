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
import json
import os
import posixpath
import time

from . import envfile, nginx, service, setup, status, venvs
from . import facts as host_facts
from . import lock as locks
from . import releases as rel
from .build import Archive
from .host import DeployError, Host, PublishError, Reporter, Stage, parallel, run
from .paths import VENV_DONE
from .wheels import describe, upload, wheel_id

__all__ = ["STAGES", "DeployError", "Host", "PublishError", "Reporter", "deploy", "parallel",
           "publish", "revert", "rollback", "setup_hosts"]


# --- prepare --------------------------------------------------------------------------------
def stage_lock(host: Host) -> str:
    locks.acquire(host.remote, host.paths, host.purpose, host.config.lock_timeout, host.say)
    host.locked = True
    return f"{host.paths.lock}"


def stage_check(host: Host) -> str:
    remote, paths, wheels = host.remote, host.paths, host.wheels
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


def stage_upload(host: Host) -> str:
    sent = upload(host.remote, host.paths, host.wheels, host.facts)
    host.remote.put(host.archive.path, tarball(host))
    size = os.path.getsize(host.archive.path)
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


def stage_unpack(host: Host) -> str:
    host.unpacked = True
    host.remote.script(UNPACK, host.release_dir, tarball(host), host.revision, label="unpack")
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
    paths, config = host.paths, host.config
    content = envfile.render(host.env)
    changed = host.remote.elevated(config.user).write(paths.env_file, content, mode=0o600,
                                                      private=True)
    host.as_deployer.write(paths.env_sum, envfile.sum_file(content), mode=0o600, private=True)
    names = ", ".join(sorted(host.env)) or "empty"
    return f"{'wrote' if changed else 'unchanged'} {paths.env_file} (0600 {config.user}): " \
           f"{names}"


def stage_venv(host: Host) -> str:
    wheel = host.wheels[0]
    key, reused = venvs.ensure(host.remote, host.paths, host.config, host.release_dir,
                               host.archive.path, os.path.basename(wheel), wheel_id(wheel))
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


# --- publish (on the host) ------------------------------------------------------------------
def revision_line(host: Host, event: str, revision: str = "") -> str:
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return f"{when} {event} {host.release} revision {revision or '-'} by {getpass.getuser()}"


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


# --- finish ---------------------------------------------------------------------------------
def installs_nginx(host: Host) -> bool:
    """Only root writes under /etc: setup (as root) installs the site, a deploy run as root
    too; a deploy account only checks it is up to date."""
    return host.root is not None or host.remote.login == "root"


def stage_nginx(host: Host) -> str:
    return nginx.ensure_nginx_site(host.root or host.remote, host.paths, host.config,
                                   install=installs_nginx(host))


def stage_unlock(host: Host) -> str:
    locks.release(host.remote, host.paths)
    host.locked = False
    return ""


# --- the table ------------------------------------------------------------------------------
SETUP, PREPARE, PUBLISH, FINISH = "setup", "prepare", "publish", "finish"
ROLLBACK, REVERT, RESTART = "rollback", "revert", "restart"
FLOWS = {                               # flow -> its phases (a phase is a flow of its own)
    "setup": (SETUP,), "deploy": (PREPARE, PUBLISH, FINISH), "rollback": (ROLLBACK,),
    "revert": (REVERT,), "restart": (RESTART,)}


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


# --- the runs -------------------------------------------------------------------------------
def setup_hosts(hosts: list[Host], wheels: list[str]) -> dict[str, Exception]:
    """`fab setup` on every host at once; the errors by host name."""
    def one(host: Host) -> None:
        setup.prepare(host, wheels)
        run(host, STAGES, SETUP)
    return parallel(hosts, one)


def publish(host: Host, archive: Archive | None = None) -> None:
    """Publish the prepared release on the host (swap, restart, health, mark; undone there
    on failure)."""
    try:
        run(host, STAGES, PUBLISH)
    except PublishError as exc:
        if not exc.changed:     # refused before the swap: the release was never marked
            mark_failed(host, host.revision)
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
    host.kind, host.release = "rollback", target
    host.purpose = f"rolling back to {target or 'previous good'}"
    run(host, STAGES, ROLLBACK)
    return host.release


if __name__ == "__main__":
    print(markdown(), end="")
