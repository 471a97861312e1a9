"""The railcar server on a host: its virtualenv, its service, start, restart and status.

The server runs from DEPLOY_TO/railcar (a virtualenv holding this exact railcar version,
installed from the uploaded wheel) and serves DEPLOY_TO/current, as the app account (never
root). When systemd runs on the host it is a Type=notify unit (templates/railcar.service.j2,
the template of `railcar config systemd`, with the master in the foreground, User= the app
account, sandboxed); otherwise a daemon started with `railcar start --daemon`, its pid file,
admin socket and log under DEPLOY_TO.

Only `fab setup` (root) installs the unit and starts the server as the app account (the
unit, or `runuser -u APP -- railcar start --daemon`). `fab deploy`, `restart` and `status`
reach the running master through its admin socket, group-accessible to the deploy account
(`--admin-group`); the app's environment comes from the env file (`--env-file`), so no
command line carries a value. A server that is down is started again by a deploy only when
its SSH user may (root, or the app account itself); otherwise the deploy stops before the
swap and says to run `fab setup` (or `systemctl start` the unit).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import shlex
from dataclasses import dataclass

from ..render import render_systemd_unit
from ..settings import BY_NAME
from .paths import Paths
from .remote import Remote, RemoteError
from .settings import DeployConfig

SERVER_PACKAGES = ("virtualenv",)   # the server venv builds the app venvs with it
# The server venv runs the master: railcar with its `server` extra (click, psutil, jinja2,
# prometheus-client). App venvs (venvs.py) get plain railcar, which is all a worker imports.
SERVER_EXTRA = "[server]"


def wheel_id(path: str) -> str:
    """A wheel's identity: its name and the sha256 of its bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"{os.path.basename(path)} {digest.hexdigest()}"


def describe(wheel_id: str) -> str:
    name, _, digest = wheel_id.partition(" ")
    return f"{name} (sha256 {digest[:12]})" if digest else name


# $1 server venv, $2 its railcar marker, $3 current, $4 admin socket, $5 the env file's sum;
# then "w:PATH" for each wheel to hash
# and "f:PATH" for each file that must exist. One round trip: what check and upload need.
FACTS = r'''
venv=$1 marker=$2 current=$3 admin=$4 envsum=$5
shift 5
if [ -x "$venv/bin/python" ]; then echo "python yes"; else echo "python no"; fi
printf 'installed %s\n' "$(head -n 1 "$marker" 2>/dev/null)"
printf 'current %s\n' "$(readlink "$current" 2>/dev/null)"
printf 'envsum %s\n' "$(cat "$envsum" 2>/dev/null)"
if [ -x "$venv/bin/railcar" ] && "$venv/bin/railcar" status --json --admin-socket "$admin" >/dev/null 2>&1; then echo "running yes"; fi
for item in "$@"; do
  f=${item#?:}
  case $item in
    w:*) [ -f "$f" ] && printf 'sha256 %s\n' "$(sha256sum "$f")" ;;
    f:*) [ -e "$f" ] || printf 'missing %s\n' "$f" ;;
  esac
done
true
'''


@dataclass
class Facts:
    """What a host has, read in one round trip (`facts`)."""

    server_python: bool             # the server venv exists
    installed: str                  # wheel_id of the railcar in it ("" if none)
    current: str | None             # release `current` points to
    wheel_hashes: dict[str, str]    # remote path -> sha256, for the wheels asked about
    missing: list[str]              # of the files asked about, those that do not exist
    running: bool = False           # the server answers on its admin socket
    env_sum: str = ""               # DEPLOY_TO/.railcar-env.sum (envfile), if readable


def facts(remote: Remote, paths: Paths, wheels: list[str], files: list[str] = ()) -> Facts:
    """Read-only: the server venv, `current`, the wheels' hashes, which `files` are missing."""
    items = [f"w:{posixpath.join(paths.wheels, os.path.basename(w))}" for w in wheels]
    items += [f"f:{path}" for path in files]
    out = remote.script(FACTS, paths.server_venv, paths.server_marker, paths.current,
                        paths.admin_socket, paths.env_sum, *items, label="host-facts").stdout
    found = Facts(False, "", None, {}, [])
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        if word == "python":
            found.server_python = rest == "yes"
        elif word == "installed":
            found.installed = rest.strip()
        elif word == "current":
            found.current = posixpath.basename(rest.strip().rstrip("/")) or None
        elif word == "envsum":
            found.env_sum = rest.strip()
        elif word == "running":
            found.running = True
        elif word == "sha256":
            digest, _, path = rest.partition("  ")
            found.wheel_hashes[path.strip()] = digest
        elif word == "missing":
            found.missing.append(rest)
    return found


# $1 the temp suffix; then the wheel paths: rename each WHEEL$1 over WHEEL.
COMMIT_UPLOADS = r'''
suffix=$1
shift
for f in "$@"; do mv -f "$f$suffix" "$f" || exit 1; done
'''


def upload_wheels(remote: Remote, paths: Paths, wheels: list[str], known: Facts) -> list[str]:
    """Upload the wheels the host lacks or has different bytes of (sha256, from `known`),
    under temp names renamed into place in one round trip; idempotent."""
    uploads = []
    for wheel in wheels:
        target = posixpath.join(paths.wheels, os.path.basename(wheel))
        if known.wheel_hashes.get(target) != wheel_id(wheel).split(" ")[1]:
            uploads.append((wheel, target + ".part"))
    remote.put_all(uploads)
    sent = [target[:-len(".part")] for _, target in uploads]
    if sent:
        remote.script(COMMIT_UPLOADS, ".part", *sent, label="commit-uploads")
    return [posixpath.basename(path) for path in sent]


# $1 host python, $2 server venv, $3 marker, $4 marker text, $5 the railcar wheel; then the
# `pip install` arguments (the wheel with its server extra among them). The railcar wheel is
# reinstalled even at the same version, since its bytes changed.
SERVER_VENV = r'''
set -e
python=$1 venv=$2 marker=$3 text=$4 wheel=$5
shift 5
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
rm -f "$marker"
"$venv/bin/python" -m pip install -q --disable-pip-version-check "$@"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps --force-reinstall "$wheel"
printf '%s\n' "$text" > "$marker"
'''


def ensure_server_venv(remote: Remote, paths: Paths, config: DeployConfig, wheel: str,
                       known: Facts) -> bool:
    """The server's virtualenv with this railcar wheel; returns whether it changed."""
    wanted = wheel_id(wheel)
    if known.installed == wanted:
        return False
    target = posixpath.join(paths.wheels, os.path.basename(wheel))
    remote.script(SERVER_VENV, config.python, paths.server_venv, paths.server_marker, wanted,
                  target, *config.pip_args, "--find-links", paths.wheels,
                  target + SERVER_EXTRA, *SERVER_PACKAGES, label="server-venv")
    return True


def start_argv(paths: Paths, config: DeployConfig, daemon: bool = True) -> list[str]:
    """The server's command line: no value of the app's environment (that is --env-file).
    A daemon logs to DEPLOY_TO/log/railcar.log; the master of the systemd unit
    (daemon=False) to stderr, which is the journal (`journalctl -u railcar-APP`)."""
    argv = [paths.railcar, "start", paths.current, "--name", config.app,
            "--bind", f"unix:{paths.app_socket}", "--workers", str(config.workers),
            "--admin-socket", paths.admin_socket, "--admin-group", config.user,
            "--socket-group", config.user, "--env-file", paths.env_file,
            "--pid-file", paths.pid_file,
            # the server checks each new worker before it takes traffic: an unhealthy
            # release serves nothing (the publish's health stage is the second check)
            "--health-path", config.health_path, "--health-timeout", str(config.health_timeout)]
    if daemon:
        argv += ["--log-file", paths.server_log, "--daemon"]
    for bind in config.bind:
        argv += ["--bind", bind]
    return argv


def systemd_mode(config: DeployConfig) -> str:
    """"auto" (a unit when systemd runs on the host), "yes" or "no", for the scripts."""
    return "auto" if config.systemd == "auto" else ("yes" if config.systemd else "no")


def uses_systemd(remote: Remote, config: DeployConfig) -> bool:
    if config.systemd == "auto":
        return remote.test(["test", "-d", "/run/systemd/system"])
    return bool(config.systemd)


def unit_name(config: DeployConfig) -> str:
    return f"railcar-{config.app}.service"


def render_unit(paths: Paths, config: DeployConfig) -> str:
    """The unit from the same template as `railcar config systemd`: the master in the
    foreground (Type=notify), started with the server's own command line, logging to the
    journal."""
    argv = start_argv(paths, config, daemon=False)
    return render_systemd_unit(
        shlex.join(argv), [config.app], BY_NAME["boot_timeout"].default,
        BY_NAME["graceful_timeout"].default, source=f"{config.app} on this host",
        rendered_by="`fab setup` (railcar.deploy)", user=config.user, group=config.user,
        read_write_paths=[paths.shared, paths.run, paths.log])


UNIT_DIR = "/etc/systemd/system"

# $1 unit name, $2 "changed" if the unit file changed: reload systemd, enable the unit, and
# restart it if it runs (a changed unit takes effect now; the app is briefly down).
UNIT_ENABLE = r'''
unit=$1 changed=$2
if [ "$changed" = changed ]; then systemctl daemon-reload || exit 1; fi
systemctl is-enabled --quiet "$unit" 2>/dev/null || systemctl enable --quiet "$unit" || exit 1
if [ "$changed" = changed ]; then systemctl try-restart "$unit" || exit 1; fi
'''


def ensure_unit(root: Remote, paths: Paths, config: DeployConfig) -> bool:
    """Install and enable the systemd unit (`root`: an elevated Remote); returns whether it
    changed; a changed unit of a running service is restarted. Idempotent."""
    path = posixpath.join(UNIT_DIR, unit_name(config))
    changed = root.write(path, render_unit(paths, config), mode=0o644)
    root.script(UNIT_ENABLE, unit_name(config), "changed" if changed else "same",
                label="enable-unit")
    return changed


# The server's life in one round trip each: $1 action (start, restart, stop), $2 railcar,
# $3 admin socket, $4 app, $5 systemd mode, $6 unit, $7 app account; then the `railcar start`
# command line. Without systemd the daemon is started as the app account: directly by that
# account, through runuser by root, and not at all by another account (it says why).
SERVICE = r'''
action=$1 railcar=$2 admin=$3 app=$4 mode=$5 unit=$6 user=$7
shift 7
running() { "$railcar" status --json --admin-socket "$admin" >/dev/null 2>&1; }
systemd() { [ "$mode" = yes ] || { [ "$mode" = auto ] && [ -d /run/systemd/system ]; }; }
start() {
  if systemd; then
    systemctl start "$unit" && echo "started $unit" && return 0
    echo "the server is not running and $(id -un) cannot start $unit: run \`fab setup\` (or systemctl start $unit as root)" >&2
    return 1
  fi
  if [ "$(id -un)" = "$user" ]; then "$@"
  elif [ "$(id -u)" = 0 ]; then runuser -u "$user" -- "$@"
  else
    echo "the server is not running and $(id -un) cannot start it as $user: run \`fab setup\` (it starts the server as $user)" >&2
    return 1
  fi
}
case $action in
  restart) if running; then exec "$railcar" restart "$app" --admin-socket "$admin"; fi; start "$@" ;;
  start) if running; then echo "running, unchanged"; else start "$@"; fi ;;
  stop) if systemd; then systemctl stop "$unit"; elif running; then "$railcar" stop --admin-socket "$admin"; fi ;;
esac
'''


def service_args(paths: Paths, config: DeployConfig, action: str) -> list[str]:
    """The SERVICE script's arguments for `action` (start, restart, stop)."""
    return [action, paths.railcar, paths.admin_socket, config.app, systemd_mode(config),
            unit_name(config), config.user, *start_argv(paths, config)]


def service_command(paths: Paths, config: DeployConfig, action: str) -> list[str]:
    """The argv that runs `action` ON THE HOST (what the host-side publish runs)."""
    return ["sh", "-c", SERVICE, f"{action}-server", *service_args(paths, config, action)]


def _service(remote: Remote, paths: Paths, config: DeployConfig, action: str,
             check: bool = True) -> str:
    return remote.script(SERVICE, *service_args(paths, config, action),
                         label=f"{action}-server", check=check).stdout


def nginx_site(config: DeployConfig) -> str:
    return posixpath.join(config.nginx["sites_dir"], f"railcar-{config.app}.conf")


# The app's nginx site in one round trip: $1 railcar, $2 site file, $3 test command, $4 reload
# command, $5 current, $6 mode (install, or check: only say whether it is up to date), $7 a
# dir for the check's rendering; then the `railcar config nginx` arguments (the server's own
# command line, so the site has the host's paths). Installed: rendered next to the site under
# a dot name (no include glob matches it), renamed over the site only when it differs; a
# failing test puts the old site back (or removes the new one) and fails with nginx's message.
NGINX_SITE = r'''
railcar=$1 site=$2 check=$3 reload=$4 current=$5 mode=$6 tmp=$7
shift 7
dir=$(dirname "$site") name=$(basename "$site")
new="$dir/.$name.new" old="$dir/.$name.old"
[ "$mode" = check ] && new="$tmp/$name.new"
[ -d "$dir" ] || { echo "$dir does not exist: is nginx installed (railcar.nginx.sites_dir)?" >&2; exit 1; }
[ -d "$current" ] || { echo "no release yet: the first deploy installs it"; exit 0; }
"$railcar" config nginx -o "$new" "$@" || { rm -f "$new"; exit 1; }
if cmp -s "$new" "$site"; then rm -f "$new"; echo "unchanged $site"; exit 0; fi
if [ "$mode" = check ]; then
  rm -f "$new"
  echo "WARNING: $site is out of date, and $(id -un) may not install it: run \`fab setup\` to install it"
  exit 0
fi
had=no
if [ -e "$site" ]; then cp -p "$site" "$old" || exit 1; had=yes; fi
chmod 644 "$new" && mv -f "$new" "$site" || exit 1
if ! out=$(sh -c "$check" 2>&1); then
  if [ $had = yes ]; then mv -f "$old" "$site"; else rm -f "$site"; fi
  printf '%s\n' "$out" >&2
  echo "\`$check\` failed: the previous site is left in place" >&2
  exit 1
fi
rm -f "$old"
sh -c "$reload" || { echo "\`$reload\` failed" >&2; exit 1; }
echo "installed $site, nginx reloaded"
'''


def nginx_argv(paths: Paths, config: DeployConfig) -> list[str]:
    """`railcar config nginx` arguments: the server's options (not the env file, which only
    the app account reads), the listen address and server names."""
    argv = start_argv(paths, config)[2:]
    at = argv.index("--env-file")
    del argv[at:at + 2]
    argv += ["--listen", config.nginx["listen"]]
    for name in config.nginx["server_names"]:
        argv += ["--server-name", name]
    return argv


def ensure_nginx_site(remote: Remote, paths: Paths, config: DeployConfig,
                      install: bool = True) -> str:
    """Render the app's nginx site on the host (`railcar config nginx` of the server venv,
    with the server's command line). `install` (setup, as root): install it if it changed,
    test, reload; raises RemoteError with nginx's message when the test fails (the old site
    stays). Otherwise (a deploy account, which may not write under /etc): only report
    whether the installed site is up to date. Idempotent."""
    nginx = config.nginx
    out = remote.script(NGINX_SITE, paths.railcar, nginx_site(config), nginx["test_command"],
                        nginx["reload_command"], paths.current,
                        "install" if install else "check", paths.tmp,
                        *nginx_argv(paths, config), label="nginx-site")
    return out.stdout.strip().splitlines()[-1] if out.stdout.strip() else "done"


def running(remote: Remote, paths: Paths) -> bool:
    return remote.test([paths.railcar, "status", "--json", "--admin-socket", paths.admin_socket])


def status(remote: Remote, paths: Paths, as_json: bool = False) -> str:
    argv = [paths.railcar, "status", "--admin-socket", paths.admin_socket]
    return remote.run(argv + (["--json"] if as_json else [])).stdout


def start(remote: Remote, paths: Paths, config: DeployConfig) -> str:
    """Start the server on `current` unless it runs; raises RemoteError with its report if
    it fails."""
    return _service(remote, paths, config, "start").strip()


def restart(remote: Remote, paths: Paths, config: DeployConfig) -> str:
    """Rolling restart onto what `current` points to now (blocks until done); starts the
    server if it does not run. Raises RemoteError (with the app's traceback) on failure."""
    return _service(remote, paths, config, "restart").strip()


def stop(remote: Remote, paths: Paths, config: DeployConfig) -> None:
    _service(remote, paths, config, "stop", check=False)


def probe_args(paths: Paths, config: DeployConfig, release_dir: str,
               timeout: float | None = None) -> list[str]:
    """The arguments of railcar.deploy.probe: health_path through the app's unix socket, and
    every ready worker on `release_dir`."""
    return ["--socket", paths.app_socket, "--path", config.health_path,
            "--admin-socket", paths.admin_socket, "--app", config.app,
            "--release", release_dir,
            "--timeout", f"{config.health_timeout if timeout is None else timeout:g}"]


def health_check(remote: Remote, paths: Paths, config: DeployConfig, release_dir: str,
                 timeout: float | None = None) -> str:
    """GET health_path through the app's unix socket until healthy, and check that every
    worker serves `release_dir`. Raises RemoteError when unhealthy."""
    result = remote.run([paths.server_python, "-m", "railcar.deploy.probe",
                         *probe_args(paths, config, release_dir, timeout)])
    return result.stdout.strip()


__all__ = ["RemoteError"]
