"""The deploy's prepare stages on one host (rows of pipeline.STAGES): lock, check, upload,
unpack, link, env, venv, hooks; and unlock, the lock's other half. Each is a function of the
Host returning a short detail, idempotent, and does its remote work in one quoted script
where it can. Nothing here touches `current`: a failure leaves the site as it was.
"""

from __future__ import annotations

import os
import posixpath

from . import envfile, venvs
from . import facts as host_facts
from . import lock as locks
from .host import DeployError, Host
from .wheels import describe, upload, wheel_id


def stage_lock(host: Host) -> str:
    locks.acquire(host.remote, host.paths, host.purpose, host.config.lock_timeout, host.say)
    host.locked = True
    return f"{host.paths.lock}"


def stage_check(host: Host) -> str:
    remote, paths, wheels = host.remote, host.paths, host.wheels
    shared_files = [posixpath.join(paths.shared, f) for f in host.config.shared_files]
    login, user = remote.login, host.config.user
    # whether the server runs matters only to a login that could not start it (the publish
    # starts a server that is down): root and the app account skip that interpreter start
    host.facts = known = host_facts.read(remote, paths, wheels, shared_files,
                                         running=login not in ("root", user))
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


def stage_unlock(host: Host) -> str:
    locks.release(host.remote, host.paths)
    host.locked = False
    return ""
