"""`fab setup`'s stages on one host, as root (directly or through sudo): the accounts, the
layout with its owners, railcar's wheel, the server virtualenv, the env file, the placeholder
`current`, the systemd unit, the server started as the app account, and (a row shared with
the deploy's finish) the nginx site. Every stage is idempotent. `prepare` decides which
accounts the stages run as: one account for all three roles but root (deploy = app = SSH
user) with no unit and no nginx site needs no root at all.
"""

from __future__ import annotations

import os
import threading

from . import server_venv, service, unit
from . import facts as host_facts
from .host import DeployError, Host
from .paths import Paths
from .settings import DeployConfig
from .wheels import upload

_accounts = threading.Lock()  # hosts may share /etc/passwd (loopback, containers): one at once


# $1 app account, $2 deploy account, $3 its home (deploy_to), $4 nginx's account or "".
# The app account and its group (same name) are created if missing; the deploy account (and
# nginx's) join that group: the admin socket, the app socket and shared/ run/ log/ are its.
ACCOUNTS = r'''
app=$1 deployer=$2 home=$3 web=$4
in_group() { id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"; }
getent group "$app" >/dev/null || { groupadd --system "$app" && echo "created group $app"; } || exit 1
if ! id -u "$app" >/dev/null 2>&1; then
  useradd --system --gid "$app" --home-dir "$home" --no-create-home \
    --shell "$(command -v nologin || echo /usr/sbin/nologin)" "$app" || exit 1
  echo "created account $app"
fi
[ "$(id -u "$app")" != 0 ] || { echo "railcar.user $app is root: the app never runs as root" >&2; exit 1; }
in_group "$app" "$app" || { usermod -a -G "$app" "$app" || exit 1; }
id -u "$deployer" >/dev/null 2>&1 || { echo "the deploy account $deployer does not exist: create it (with your SSH key), or set railcar.deploy_user" >&2; exit 1; }
if [ "$deployer" != root ] && ! in_group "$deployer" "$app"; then
  usermod -a -G "$app" "$deployer" && echo "added $deployer to group $app" || exit 1
fi
if [ -n "$web" ] && id -u "$web" >/dev/null 2>&1 && ! in_group "$web" "$app"; then
  usermod -a -G "$app" "$web" && echo "added $web to group $app" || exit 1
fi
true
'''

# Items "OWNER:GROUP:MODE:PATH": each directory created if missing (and printed), then given
# its owner and mode; a deploy-owned tree that had another owner (an older layout) is chowned
# as a whole.
LAYOUT = r'''
for item in "$@"; do
  owner=${item%%:*} rest=${item#*:}
  group=${rest%%:*} rest=${rest#*:}
  mode=${rest%%:*} d=${rest#*:}
  [ -L "$d" ] && { echo "$d is a symlink: refusing to use it" >&2; exit 1; }
  [ -d "$d" ] || { mkdir -p "$d" && printf 'created %s\n' "$d"; } || exit 1
  if [ "$(stat -c %U "$d")" != "$owner" ]; then chown -R "$owner:$group" "$d" || exit 1; fi
  chown "$owner:$group" "$d" && chmod "$mode" "$d" || exit 1
done
'''

# $1 the placeholder app dir, $2 its wsgi.py text, $3 current: the app that answers 503 until
# the first release, and `current` pointing at it when there is no current yet.
PLACEHOLDER = r'''
mkdir -p "$1" && printf '%s' "$2" > "$1/wsgi.py" || exit 1
if [ ! -e "$3" ] && [ ! -L "$3" ]; then ln -s "$1" "$3" && echo "current -> $1"; fi
true
'''

PLACEHOLDER_APP = """\
# Served by railcar until the first release of this app is deployed (railcar.deploy).
# It answers 503, but 200 to the server's own health check (railcar.health: it can serve
# its 503s), so the server starts and a failed first release can be put back onto it.
def application(environ, start_response):
    healthy = environ.get("HTTP_USER_AGENT") == "railcar-health-check"
    body = b"no release deployed yet\\n"
    start_response("200 OK" if healthy else "503 Service Unavailable",
                   [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


def layout_items(paths: Paths, config: DeployConfig, deployer: str, group: str) -> list[str]:
    """The directories of the layout as OWNER:GROUP:MODE:PATH (see paths.Paths); `group`:
    the deploy account's primary group."""
    app = config.user
    mine = f"{deployer}:{group}"
    items = [f"{deployer}:{app}:750:{paths.root}"]
    items += [f"{mine}:755:{d}" for d in (paths.releases, paths.venvs, paths.wheels)]
    items += [f"{mine}:700:{paths.tmp}"]
    items += [f"{app}:{app}:2770:{paths.shared}"]
    items += [f"{app}:{app}:2770:{paths.shared}/{d}" for d in config.shared_dirs]
    items += [f"{app}:{app}:750:{d}" for d in (paths.run, paths.log)]
    return items


def deploy_account(host: Host) -> str:
    return host.config.deploy_user or host.remote.login


def prepare(host: Host, wheels: list[str]) -> None:
    """Ready `host` for the setup flow: the run's wheels, the accounts its stages run as."""
    remote, config = host.remote, host.config
    deployer = deploy_account(host)
    host.systemd = unit.uses_systemd(remote, config)
    alone = remote.login == deployer == config.user and remote.login != "root" \
        and not config.nginx["enabled"] and not host.systemd
    host.root = remote if alone else remote.elevated("root")
    host.deployer = remote.elevated(deployer)
    host.wheels = wheels
    host.env_changed = True             # setup always (re)writes the env file


def stage_accounts(host: Host) -> str:
    config, deployer = host.config, deploy_account(host)
    web = config.nginx["user"] if config.nginx["enabled"] and config.nginx["user"] else ""
    with _accounts:
        out = host.root.script(ACCOUNTS, config.user, deployer, host.paths.root, web,
                               label="accounts").stdout.strip()
    return "; ".join(out.splitlines()) or f"app {config.user}, deploy {deployer}: unchanged"


def stage_layout(host: Host) -> str:
    deployer = deploy_account(host)
    group = host.root.run(["id", "-gn", deployer]).stdout.strip()
    out = host.root.script(LAYOUT, *layout_items(host.paths, host.config, deployer, group),
                           label="layout")
    created = [line for line in out.stdout.splitlines() if line.startswith("created")]
    host.facts = host_facts.read(host.as_deployer, host.paths, host.wheels)
    return f"created {len(created)} dir(s)" if created else "unchanged"


def stage_wheels(host: Host) -> str:
    sent = upload(host.as_deployer, host.paths, host.wheels, host.facts)
    return f"uploaded {len(sent)} wheel(s)" if sent else "unchanged"


def stage_server(host: Host) -> str:
    paths, config = host.paths, host.config
    changed = server_venv.ensure(host.as_deployer, paths, config, host.wheels[0], host.facts)
    # the app account runs this interpreter: a python3 under /root (pyenv) it cannot reach
    # would fail only at start, with a bare "Permission denied"
    if not host.remote.elevated(config.user).test([paths.server_python, "-c", ""]):
        raise DeployError(f"[{host.name}] the app account {config.user} cannot run "
                          f"{paths.server_python} (made from railcar.python "
                          f"{config.python!r}): set railcar.python to an interpreter "
                          "every account can run, e.g. /usr/bin/python3")
    return f"installed {os.path.basename(host.wheels[0])}" if changed else "unchanged"


def stage_placeholder(host: Host) -> str:
    paths = host.paths
    out = host.as_deployer.script(PLACEHOLDER, paths.placeholder, PLACEHOLDER_APP,
                                  paths.current, label="placeholder").stdout.strip()
    return out or "current exists"


def stage_unit(host: Host) -> str:
    config = host.config
    if not host.systemd:
        return f"no systemd: runs as `railcar start --daemon` as {config.user}"
    changed = unit.ensure_unit(host.root, host.paths, config)
    return ("installed " if changed else "unchanged ") + unit.unit_name(config)


def stage_start(host: Host) -> str:
    return service.start(host.root, host.paths, host.config).splitlines()[0]
