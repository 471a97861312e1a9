"""The Fabric tasks: setup, deploy, rollback, releases, status, restart, unlock.

A user's fabfile.py is `from railcar.deploy import ns`; settings go under `railcar:` in
fabric.yaml (see settings.DEFAULTS). Hosts come from `-H a,b` or `railcar.hosts`.
`deploy` works on all the hosts of one run together (every host is prepared before any
swaps): with `-H a,b`, Fabric calls it once per host, the first call deploys to the whole
group and the later calls of the same run have nothing left to do.
"""

from __future__ import annotations

import glob
import os
import sys

from fabric import Connection, task
from invoke import Collection
from invoke.exceptions import Exit

from . import build, pipeline, service
from . import lock as locks
from . import releases as rel
from .lock import LockError
from .paths import Paths
from .pipeline import DeployError, Host, Reporter
from .remote import Remote, RemoteError
from .settings import DEFAULTS, ConfigError, DeployConfig, load

FAILURES = (ConfigError, DeployError, RemoteError, LockError, build.BuildError)
_deployed_groups: set[tuple[str, ...]] = set()
_wheel_dirs: list = []      # temp dirs of built wheels, alive for the whole run


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


def _group(c) -> list[Connection] | None:
    """deploy's hosts: the whole -H group on its first call, None on the later calls."""
    if not isinstance(c, Connection):
        return _connections(c)
    group = cli_hosts()
    if c.original_host not in group:
        return [c]
    key = tuple(group)
    if key in _deployed_groups:
        return None
    _deployed_groups.add(key)
    return [c if name == c.original_host else Connection(name, config=c.config)
            for name in group]


def _hosts(connections: list[Connection], reporter: Reporter) -> list[Host]:
    hosts = []
    for connection in connections:
        name = connection.original_host
        hosts.append(Host(Remote(connection, name), load(connection.config, name), reporter))
    return hosts


def wheels(config: DeployConfig) -> list[str]:
    """railcar's wheel first (given, found in the wheelhouse, or built once per run), then
    the wheelhouse's other wheels."""
    wheel = build.find_wheel(config.wheel, config.wheelhouse)
    if wheel is None:
        if not _wheel_dirs:
            _wheel_dirs.append(build.local_workdir())
            print(f"building the railcar wheel in {_wheel_dirs[0].name} ...", flush=True)
            build.build_wheel(_wheel_dirs[0].name)
        wheel = build.find_wheel(None, _wheel_dirs[0].name)
    extra = sorted(glob.glob(os.path.join(config.wheelhouse, "*.whl"))) if config.wheelhouse else []
    return [wheel] + [w for w in extra if os.path.basename(w) != os.path.basename(wheel)]


def _fail(exc: BaseException) -> Exit:
    return Exit(f"railcar deploy: {exc}", code=1)


@task
def setup(c):
    """Create the layout, the server virtualenv and the service on each host, and the nginx
    site when railcar.nginx.enabled (idempotent)."""
    reporter = Reporter()
    try:
        for host in _hosts(_connections(c), reporter):
            setup_host(host)
    except FAILURES as exc:
        raise _fail(exc) from None


# Directories given as arguments that are missing are created and printed.
LAYOUT = r'''
for d in "$@"; do [ -d "$d" ] || { mkdir -p "$d" && printf '%s\n' "$d"; } || exit 1; done
'''


def setup_host(host: Host) -> None:
    remote, paths, config = host.remote, host.paths, host.config
    all_wheels = wheels(config)
    known = None

    def layout():
        nonlocal known
        dirs = paths.layout() + [f"{paths.shared}/{d}" for d in config.shared_dirs]
        created = remote.script(LAYOUT, *dirs, label="layout").stdout.split()
        known = service.facts(remote, paths, all_wheels)
        return f"created {len(created)} dir(s)" if created else "unchanged"

    def upload():
        sent = service.upload_wheels(remote, paths, all_wheels, known)
        return f"uploaded {len(sent)} wheel(s)" if sent else "unchanged"

    def server_venv():
        changed = service.ensure_server_venv(remote, paths, config, all_wheels[0], known)
        return f"installed {os.path.basename(all_wheels[0])}" if changed else "unchanged"

    def unit():
        if not service.uses_systemd(remote, config):
            return "no systemd: runs as `railcar start --daemon`"
        return ("installed " if service.ensure_unit(remote, paths, config) else "unchanged ") \
            + service.unit_name(config)

    def start():
        if known.current is None:
            return "no release yet: the first deploy starts it"
        return service.start(remote, paths, config).splitlines()[0]

    host.stage("layout", f"directories under {paths.root}", layout)
    host.stage("wheels", "upload railcar's wheel", upload)
    host.stage("server", f"server virtualenv {paths.server_venv}", server_venv)
    host.stage("service", "systemd unit or daemon", unit)
    host.stage("start", "start the server if it has a release", start)
    if config.nginx["enabled"]:
        host.stage("nginx", f"site {service.nginx_site(config)}, test, reload",
                   lambda: service.ensure_nginx_site(remote, paths, config))


@task(help={"ref": "git ref to deploy (default: railcar.ref)"})
def deploy(c, ref=None):
    """Deploy a release to every host: prepare all, then swap and restart host by host."""
    connections = _group(c)
    if connections is None:
        return
    reporter = Reporter()
    try:
        hosts = _hosts(connections, reporter)
        first = hosts[0].config
        workdir = build.local_workdir()
        with workdir as tmp:
            archive = build.build_release(first.source, ref or first.ref, tmp)
            release = build.release_name(archive.short)
            reporter.line(f"release {release}: {archive.ref} = {archive.revision} "
                          f"to {', '.join(h.name for h in hosts)}")
            pipeline.deploy(hosts, archive, wheels(first), release)
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
    """railcar status of each host."""
    try:
        for host in _hosts(_connections(c), Reporter()):
            print(f"[{host.name}]\n" + service.status(host.remote, host.paths, json), flush=True)
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
