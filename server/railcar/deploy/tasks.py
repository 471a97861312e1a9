"""The Fabric tasks: setup, deploy, rollback, releases, status, restart, unlock.

A user's fabfile.py is `from railcar.deploy import ns`; settings go under `railcar:` in
fabric.yaml (see settings.DEFAULTS). Hosts come from `-H a,b` or `railcar.hosts`.

`deploy` and `setup` work on all the hosts of one run together (in parallel; for deploy,
every host is prepared before any publishes). Fabric calls a task once per -H host and its
post-tasks once per run (fabric.Executor.expand_calls), so each of the two is a pair: the
task only enlists its host (the Connection Fabric made for it) in the run's config, which
Fabric hands to every call of the run, and its post-task takes the enlisted hosts and works
on all of them. Without -H the task runs once and the post-task uses railcar.hosts. The
other tasks work host by host.
"""

from __future__ import annotations

from fabric import Connection, task
from invoke import Collection
from invoke.exceptions import Exit

from . import build, hostkeys, pipeline, wheels
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
ENLISTED = "railcar_enlisted_{task}"    # the run's config key of a group task's hosts


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


def enlist(c, task: str, **arguments) -> None:
    """A group task's call for one host: add the host (the Connection Fabric made; none
    without -H) and the task's arguments to the run's config."""
    key = ENLISTED.format(task=task)
    before = c.config.get(key) or {}
    mine = (c,) if isinstance(c, Connection) else ()
    c.config[key] = {"connections": tuple(before.get("connections", ())) + mine,
                     "arguments": arguments}


def enlisted(c, task: str) -> tuple[list[Connection], dict]:
    """In a group task's post-task: the enlisted hosts (else railcar.hosts) and the task's
    arguments; the run's config forgets them, so a later call of the task starts anew."""
    found = c.config.pop(ENLISTED.format(task=task), None) or {}
    connections = list(found.get("connections", ())) or _connections(c)
    return connections, dict(found.get("arguments", {}))


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


def _setup_all(c):
    """setup's post-task: the run's enlisted hosts at once."""
    connections, _ = enlisted(c, "setup")
    reporter = Reporter()
    try:
        hosts = _hosts(connections, reporter, with_env=True)
        with wheels.for_run(hosts[0].config, reporter.line) as shipped:
            errors = pipeline.setup_hosts(hosts, shipped)
    except FAILURES as exc:
        raise _fail(exc) from None
    if errors:
        raise _fail("\n".join(f"{name}: {exc}" for name, exc in errors.items()))


@task(post=[task(_setup_all)])
def setup(c):
    """As root (directly, or through sudo): create the app account, the layout with its
    owners, the server virtualenv, the env file, the service (systemd unit or daemon, run as
    the app account) and the nginx site when railcar.nginx.enabled; start the server
    (idempotent; the -H hosts in parallel). Afterwards the deploy account needs no root."""
    enlist(c, "setup")


def _deploy_all(c):
    """deploy's post-task: the run's enlisted hosts at once."""
    connections, arguments = enlisted(c, "deploy")
    ref = arguments.get("ref")
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


@task(post=[task(_deploy_all)], help={"ref": "git ref to deploy (default: railcar.ref)"})
def deploy(c, ref=None):
    """Deploy a release to every host: prepare all, then publish (swap, restart, health,
    mark: on each host, detached from SSH) in canary and batch order."""
    enlist(c, "deploy", ref=ref)


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
            print(rel.render(host.name, rel.read_inventory(host.remote, host.paths).releases),
                  flush=True)
    except FAILURES as exc:
        raise _fail(exc) from None


@task(help={"json": "railcar status --json"})
def status(c, json=False):
    """railcar status of each host; without --json also where `current` points, its state,
    and a host-side publish in progress."""
    try:
        for host in _hosts(_connections(c), Reporter()):
            print(f"[{host.name}]\n" + server_status(host.remote, host.paths, json),
                  flush=True)
    except FAILURES as exc:
        raise _fail(exc) from None


@task
def restart(c):
    """Rolling restart of the app on each host (starts the server if it is not running)."""
    reporter = Reporter()
    try:
        for host in _hosts(_connections(c), reporter):
            pipeline.run(host, pipeline.STAGES, pipeline.RESTART)
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
