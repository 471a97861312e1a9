"""The railcar server on a host as a service: start, rolling restart, stop.

The server runs from DEPLOY_TO/railcar (server_venv.py) and serves DEPLOY_TO/current, as the
app account (never root): a systemd unit when the host runs systemd (unit.py), otherwise a
daemon started with `railcar start --daemon` (command.py), its pid file, admin socket and log
under DEPLOY_TO.

Only `fab setup` (root) starts the server as the app account (the unit, or
`runuser -u APP -- railcar start --daemon`). `fab deploy`, `restart` and `status` reach the
running master through its admin socket, group-accessible to the deploy account
(`--admin-group`). A server that is down is started again by a deploy only when its SSH user
may (root, or the app account itself); otherwise the SERVICE script says to run `fab setup`
(or `systemctl start` the unit). The host-side publish runs the same script
(`service_command`), so a restart from `fab` and one on the host are the same.
"""

from __future__ import annotations

from .command import start_argv
from .paths import Paths
from .remote import Remote
from .settings import DeployConfig
from .unit import systemd_mode, unit_name

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


def _service(remote: Remote, paths: Paths, config: DeployConfig, action: str) -> str:
    return remote.script(SERVICE, *service_args(paths, config, action),
                         label=f"{action}-server").stdout


def start(remote: Remote, paths: Paths, config: DeployConfig) -> str:
    """Start the server on `current` unless it runs; raises RemoteError with its report if
    it fails."""
    return _service(remote, paths, config, "start").strip()


def restart(remote: Remote, paths: Paths, config: DeployConfig) -> str:
    """Rolling restart onto what `current` points to now (blocks until done); starts the
    server if it does not run. Raises RemoteError (with the app's traceback) on failure."""
    return _service(remote, paths, config, "restart").strip()
