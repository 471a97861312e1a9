"""The Fabric tasks: setup, deploy, rollback, releases, status, restart, unlock.

A user's fabfile.py is `from railcar.deploy import ns`; settings go under `railcar:` in
fabric.yaml (see settings.DEFAULTS). Hosts come from `-H a,b` or `railcar.hosts`.
`deploy` and `setup` work on all the hosts of one run together (in parallel; for deploy,
every host is prepared before any publishes): with `-H a,b`, Fabric calls a task once per
host, the first call works on the whole group and the later calls of the same run have
nothing left to do.
"""

from __future__ import annotations

import os
import sys
import threading

from fabric import Connection, task
from invoke import Collection
from invoke.exceptions import Exit

from . import build, envfile, hostkeys, nginx, pipeline, server_venv, service, unit, wheels
from . import facts as host_facts
from . import lock as locks
from . import releases as rel
from .lock import LockError
from .paths import Paths
from .pipeline import DeployError, Host, Reporter
from .remote import Remote, RemoteError
from .settings import DEFAULTS, ConfigError, DeployConfig, env_from_machine, load
from .status import status as server_status

FAILURES = (ConfigError, DeployError, RemoteError, LockError, build.BuildError,
            hostkeys.HostKeyError)
_grouped: set[tuple[str, ...]] = set()   # (task, *hosts) already run for the -H group
_accounts = threading.Lock()  # hosts may share /etc/passwd (loopback, containers): one at once


def cli_hosts(argv: list[str] | None = None) -> list[str]:
    """The hosts given with -H/--hosts on the `fab` command line."""
    argv = sys.argv if argv is None else argv
    found: list[str] = []
    for index, arg in enumerate(argv):
        value = None
        if arg in ("-H", "--hosts") and index + 1 < len(argv):
            value = argv[index + 1]
        elif arg.startswith("--hosts="):
            value = arg.split("=", 1)[1]
        elif arg.startswith("-H") and len(arg) > 2:
            value = arg[2:]
        if value:
            found += [h for h in value.split(",") if h]
    return found


def _connections(c) -> list[Connection]:
    """This task call's hosts: the Connection Fabric gave, else railcar.hosts."""
    if isinstance(c, Connection):
        return [c]
    try:
        names = load(c.config).hosts
    except ConfigError as exc:
        raise Exit(str(exc), code=1) from None
    if not names:
        raise Exit("no hosts: give -H HOST[,HOST] or set railcar.hosts", code=1)
    return [Connection(name, config=c.config) for name in names]


def _group(c, task: str) -> list[Connection] | None:
    """The hosts of a task that works on all of them at once (deploy, setup): the whole -H
    group on its first call, None on the later calls of the same run."""
    if not isinstance(c, Connection):
        return _connections(c)
    group = cli_hosts()
    if c.original_host not in group:
        return [c]
    key = (task, *group)
    if key in _grouped:
        return None
    _grouped.add(key)
    return [c if name == c.original_host else Connection(name, config=c.config)
            for name in group]


def masked(env: dict[str, str], config: DeployConfig) -> list[str]:
    """The values masked in output: every secret, and env values long enough to mask
    without garbling the rest (a value such as "1" would hide every digit 1)."""
    return [value for name, value in env.items()
            if len(value) >= (3 if name in config.secrets else 6)]


def _hosts(connections: list[Connection], reporter: Reporter, with_env: bool = False) \
        -> list[Host]:
    """One Host per connection, its host key checked on connecting (hostkeys.guard); with
    `with_env`, the app's environment is read (secrets from this machine's environment)."""
    hosts = []
    for connection in connections:
        name = connection.original_host
        config = load(connection.config, name)
        env = env_from_machine(config) if with_env else dict(config.env)
        hostkeys.guard(connection, name, config.known_hosts,
                       hostkeys.trust_on_first_use(config.trust_new_hosts), reporter.line)
        host = Host(Remote(connection, name, masked(env, config)), config, reporter)
        host.env = env
        hosts.append(host)
    return hosts


def _fail(exc: BaseException) -> Exit:
    return Exit(f"railcar deploy: {exc}", code=1)


@task
def setup(c):
    """As root (directly, or through sudo): create the app account, the layout with its
    owners, the server virtualenv, the env file, the service (systemd unit or daemon, run as
    the app account) and the nginx site when railcar.nginx.enabled; start the server
    (idempotent; the -H hosts in parallel). Afterwards the deploy account needs no root."""
    connections = _group(c, "setup")
    if connections is None:
        return
    reporter = Reporter()
    try:
        hosts = _hosts(connections, reporter, with_env=True)
        with wheels.for_run(hosts[0].config, reporter.line) as shipped:
            errors = pipeline.parallel(hosts, lambda host: setup_host(host, shipped))
    except FAILURES as exc:
        raise _fail(exc) from None
    if errors:
        raise _fail("\n".join(f"{name}: {exc}" for name, exc in errors.items()))


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


def setup_host(host: Host, all_wheels: list[str]) -> None:
    """`fab setup` on one host; `all_wheels`: the run's (wheels.for_run)."""
    remote, paths, config = host.remote, host.paths, host.config
    deployer = config.deploy_user or remote.login
    # One account for all three roles but root (deploy = app = SSH user), no unit and no
    # nginx site: nothing needs root, so setup runs without (and checks the accounts only).
    systemd = unit.uses_systemd(remote, config)
    alone = remote.login == deployer == config.user and remote.login != "root" \
        and not config.nginx["enabled"] and not systemd
    root = remote if alone else remote.elevated("root")
    as_deployer = remote.elevated(deployer)
    content = envfile.render(host.env)
    known = None

    def accounts():
        web = config.nginx["user"] if config.nginx["enabled"] and config.nginx["user"] else ""
        with _accounts:
            out = root.script(ACCOUNTS, config.user, deployer, paths.root, web,
                              label="accounts").stdout.strip()
        return "; ".join(out.splitlines()) or f"app {config.user}, deploy {deployer}: unchanged"

    def layout():
        nonlocal known
        group = root.run(["id", "-gn", deployer]).stdout.strip()
        out = root.script(LAYOUT, *layout_items(paths, config, deployer, group), label="layout")
        created = [line for line in out.stdout.splitlines() if line.startswith("created")]
        known = host_facts.read(as_deployer, paths, all_wheels)
        return f"created {len(created)} dir(s)" if created else "unchanged"

    def upload():
        sent = wheels.upload(as_deployer, paths, all_wheels, known)
        return f"uploaded {len(sent)} wheel(s)" if sent else "unchanged"

    def server():
        changed = server_venv.ensure(as_deployer, paths, config, all_wheels[0], known)
        # the app account runs this interpreter: a python3 under /root (pyenv) it cannot reach
        # would fail only at start, with a bare "Permission denied"
        if not remote.elevated(config.user).test([paths.server_python, "-c", ""]):
            raise DeployError(f"[{host.name}] the app account {config.user} cannot run "
                              f"{paths.server_python} (made from railcar.python "
                              f"{config.python!r}): set railcar.python to an interpreter "
                              "every account can run, e.g. /usr/bin/python3")
        return f"installed {os.path.basename(all_wheels[0])}" if changed else "unchanged"

    def environment():
        app = remote.elevated(config.user)
        changed = app.write(paths.env_file, content, mode=0o600, private=True)
        as_deployer.write(paths.env_sum, envfile.sum_file(content), mode=0o600, private=True)
        names = ", ".join(sorted(host.env)) or "empty"
        return f"{'wrote' if changed else 'unchanged'} {paths.env_file} (0600 {config.user}): " \
               f"{names}"

    def placeholder():
        out = as_deployer.script(PLACEHOLDER, paths.placeholder, PLACEHOLDER_APP, paths.current,
                                 label="placeholder").stdout.strip()
        return out or "current exists"

    def service_unit():
        if not systemd:
            return f"no systemd: runs as `railcar start --daemon` as {config.user}"
        return ("installed " if unit.ensure_unit(root, paths, config) else "unchanged ") \
            + unit.unit_name(config)

    def start():
        return service.start(root, paths, config).splitlines()[0]

    host.stage("accounts", f"app account {config.user}, deploy account {deployer}", accounts)
    host.stage("layout", f"directories under {paths.root}", layout)
    host.stage("wheels", "upload railcar's wheel", upload)
    host.stage("server", f"server virtualenv {paths.server_venv}", server)
    host.stage("env", "the app's env file (env, secrets)", environment)
    host.stage("current", "a release, or the placeholder answering 503", placeholder)
    host.stage("service", "systemd unit or daemon", service_unit)
    host.stage("start", f"start the server as {config.user} unless it runs", start)
    if config.nginx["enabled"]:
        host.stage("nginx", f"site {nginx.nginx_site(config)}, test, reload",
                   lambda: nginx.ensure_nginx_site(root, paths, config))


@task(help={"ref": "git ref to deploy (default: railcar.ref)"})
def deploy(c, ref=None):
    """Deploy a release to every host: prepare all, then publish (swap, restart, health,
    mark: on each host, detached from SSH) in canary and batch order."""
    connections = _group(c, "deploy")
    if connections is None:
        return
    reporter = Reporter()
    try:
        hosts = _hosts(connections, reporter, with_env=True)
        first = hosts[0].config
        workdir = build.local_workdir()
        with workdir as tmp, wheels.for_run(first, reporter.line) as shipped:
            archive = build.build_release(first.source, ref or first.ref, tmp)
            release = build.release_name(archive.short)
            reporter.line(f"release {release}: {archive.ref} = {archive.revision} "
                          f"to {', '.join(h.name for h in hosts)}")
            pipeline.deploy(hosts, archive, shipped, release)
    except FAILURES as exc:
        raise _fail(exc) from None


@task(help={"release": "release name to go back to (default: the previous good one)"})
def rollback(c, release=None):
    """Point current at the previous good release (or RELEASE) and restart onto it."""
    reporter = Reporter()
    try:
        for host in _hosts(_connections(c), reporter):
            now = pipeline.rollback(host, release)
            host.say(f"rolled back: current -> releases/{now}")
    except FAILURES as exc:
        raise _fail(exc) from None


@task
def releases(c):
    """List the releases of each host: current, good/failed, age, revision."""
    try:
        for host in _hosts(_connections(c), Reporter()):
            print(rel.render(host.name, rel.inventory(host.remote, host.paths)), flush=True)
    except FAILURES as exc:
        raise _fail(exc) from None


@task(help={"json": "railcar status --json"})
def status(c, json=False):
    """railcar status of each host; without --json also where `current` points, its state,
    and a host-side publish in progress."""
    try:
        for host in _hosts(_connections(c), Reporter()):
            text = server_status(host.remote, host.paths, json)
            if not json:
                text = rel.summary(rel.read_inventory(host.remote, host.paths)) + "\n" + text
            print(f"[{host.name}]\n" + text, flush=True)
    except FAILURES as exc:
        raise _fail(exc) from None


@task
def restart(c):
    """Rolling restart of the app on each host (starts the server if it is not running)."""
    reporter = Reporter()
    try:
        for host in _hosts(_connections(c), reporter):
            host.stage("restart", "rolling restart via the admin socket",
                       lambda: pipeline.stage_restart(host))
    except FAILURES as exc:
        raise _fail(exc) from None


@task
def unlock(c):
    """Remove a deploy lock left by a deploy that is gone (names the holder it removes)."""
    try:
        for host in _hosts(_connections(c), Reporter()):
            holder = locks.force_release(host.remote, Paths(host.config.deploy_to))
            host.say(f"removed the lock of {holder}" if holder else "was not locked")
    except FAILURES as exc:
        raise _fail(exc) from None


ns = Collection(setup, deploy, rollback, releases, status, restart, unlock)
ns.configure({"railcar": dict(DEFAULTS)})
