"""The `railcar` command: start, stop, restart, status, backtraces.

`start` options are generated from settings.SETTINGS. The other commands find the master by
its admin socket (`--admin-socket`, default per user) or, for stop, by `--pid-file`.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

from .extras import require_server

require_server()    # before click: without railcar[server], one line naming it, no traceback

import click  # noqa: E402

from . import __version__  # noqa: E402
from .settings import SETTINGS, ConfigError, default_admin_socket  # noqa: E402


METAVARS = {"positive_int": "N", "non_negative_int": "N", "seconds": "SECONDS",
            "port": "PORT", "text": "TEXT"}


def _start_options(function):
    for setting in reversed([s for s in SETTINGS if s.flag]):
        help_text = setting.help
        if setting.default not in (None, [], {}, False):
            help_text += f" [default: {setting.default:g}]" if isinstance(
                setting.default, float) else f" [default: {setting.default}]"
        kwargs = {"help": help_text, "default": None,
                  "metavar": METAVARS.get(setting.convert.__name__, "VALUE")}
        if setting.is_flag:
            kwargs.update(is_flag=True, default=None)
        if setting.multiple:
            kwargs.update(multiple=True, default=())
        if setting.metavar:
            kwargs["metavar"] = setting.metavar
        declaration = setting.flag
        if setting.is_flag and setting.default is True:     # on unless --no-NAME
            declaration = f"{setting.flag}/--no-{setting.flag[2:]}"
        function = click.option(declaration, setting.name, **kwargs)(function)
    return function


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="railcar")
def main() -> None:
    """railcar: a Python web application server with zero-downtime rolling restarts."""


@main.command()
@click.argument("app_dir", required=False, type=click.Path(file_okay=False))
@_start_options
def start(app_dir, **values) -> None:
    """Serve APP_DIR (default: the current directory), or the apps of --config FILE."""
    from . import config

    try:
        server_config = config.load(values, app_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    from .launcher import exec_master, launch

    exec_master(values, app_dir, sys.argv[1:])     # returns only if it cannot exec
    sys.exit(launch(server_config))


def _admin_options(function):
    function = click.option("--pid-file", default=None, metavar="PATH",
                            help="Find the master by its pid file (stop and restart signal it; "
                                 "status and backtraces need --admin-socket).")(function)
    return click.option("--admin-socket", default=None, metavar="PATH",
                        help="The master's admin socket (default: "
                             "$RAILCAR_ADMIN_SOCKET, else /run/railcar/admin.sock as root, "
                             "/tmp/railcar-UID/admin.sock otherwise).")(function)


def _trusted_default_socket() -> str:
    """The default admin socket, if its directory is safe: in a /tmp/railcar-UID someone else
    made, a stranger's socket could pose as the master (see railcar.rundir)."""
    from . import rundir

    path = default_admin_socket()
    directory = os.path.dirname(path)
    if rundir.is_default(directory) and os.path.lexists(directory):
        try:
            rundir.check(directory, strict=True)
        except rundir.RuntimeDirError as exc:
            raise click.ClickException(f"not using the admin socket in {directory}: {exc}"
                                       ) from None
    return path


def _no_pid_file(pid_file, admin_socket, command: str) -> None:
    """A pid file finds a master to signal (stop, restart), not its admin socket: refuse it
    rather than silently asking the default socket, which may be another master's."""
    if pid_file and not admin_socket:
        raise click.ClickException(f"{command} talks to the master over its admin socket: "
                                   f"give --admin-socket (--pid-file serves stop and restart)")


def _call(admin_socket, command, **kwargs):
    from .control.client import ControlError, call

    try:
        return call(admin_socket or _trusted_default_socket(), command, **kwargs)
    except ControlError as exc:
        if exc.detail:
            click.echo(exc.detail, err=True)
        if exc.result is not None and command == "restart":
            _print_restart(exc.result, err=True)
        raise click.ClickException(str(exc)) from None


def _pid_alive(pid: int) -> bool:
    """True while the process runs (a zombie, exited but not yet reaped, counts as gone)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.1)
    return False


@main.command()
@_admin_options
@click.option("--fast", is_flag=True, help="Do not wait for in-flight requests.")
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for the exit.")
def stop(admin_socket, pid_file, fast, timeout) -> None:
    """Stop the master and its workers (gracefully unless --fast)."""
    if pid_file and not admin_socket:
        pid = _read_pid_file(pid_file)
        _signal(pid, signal.SIGQUIT if fast else signal.SIGTERM)
    else:
        pid = _call(admin_socket, "stop", graceful=not fast)["pid"]
    if not _wait_gone(pid, timeout):
        raise click.ClickException(f"master {pid} still running after {timeout:g} s")
    click.echo(f"railcar master {pid} stopped")


def _read_pid_file(pid_file: str) -> int:
    """The master's pid from its pid file, checked to be a running railcar: a stale file's
    pid may have been reused by another process, which must not be signalled."""
    import psutil

    try:
        pid = int(open(pid_file).read().strip())
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"cannot read pid file {pid_file}: {exc}") from None
    try:
        command = " ".join(psutil.Process(pid).cmdline())
    except psutil.NoSuchProcess:
        raise click.ClickException(f"no railcar master: pid {pid} of {pid_file} is not running "
                                   f"(a stale pid file)") from None
    except psutil.AccessDenied:
        return pid   # another account's process (hidepid): the signal says if it may
    if "railcar" not in command:
        raise click.ClickException(f"pid {pid} of {pid_file} is not a railcar master "
                                   f"(a stale pid file?): {command[:80]}")
    return pid


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise click.ClickException(f"no railcar master: pid {pid} is gone") from None
    except PermissionError:
        raise click.ClickException(f"not allowed to signal the railcar master {pid} "
                                   f"(another account's)") from None


def _print_restart(result: dict, err: bool = False) -> None:
    for app in result.get("apps", []):
        took = (app.get("finished_at") or 0) - (app.get("started_at") or 0)
        outcome = "restarted" if app["ok"] else "FAILED"
        # A restart that failed before any new worker booted has no release to name.
        release = f", release {app['release']}" if app.get("release") else ""
        click.echo(f"{app['name']}: {outcome} ({took:.1f} s){release}", err=err)


@main.command()
@click.argument("app", required=False)
@_admin_options
def restart(app, admin_socket, pid_file) -> None:
    """Rolling restart of APP (default: every app); waits until done, non-zero on failure."""
    if pid_file and not admin_socket:
        pid = _read_pid_file(pid_file)
        _signal(pid, signal.SIGHUP)
        click.echo(f"sent SIGHUP to {pid}; the outcome is in the server log")
        return
    result = _call(admin_socket, "restart", app=app,
                   on_progress=lambda text: click.echo(text, err=True))
    _print_restart(result)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--requests", "in_flight", is_flag=True,
              help="List the requests in flight (method, path, client, age, worker).")
@_admin_options
def status(as_json, in_flight, admin_socket, pid_file) -> None:
    """Apps and workers: pid, release, state, requests, in flight, CPU, RSS, uptime."""
    from .status_table import render, render_requests

    _no_pid_file(pid_file, admin_socket, "status")
    if in_flight:
        result = _call(admin_socket, "requests")
        click.echo(json.dumps(result, indent=2) if as_json else render_requests(result))
        return
    result = _call(admin_socket, "status")
    click.echo(json.dumps(result, indent=2) if as_json else render(result))


@main.command()
@click.argument("app", required=False)
@click.option("--worker", type=int, default=None, help="Only this worker pid.")
@_admin_options
def backtraces(app, worker, admin_socket, pid_file) -> None:
    """Stacks of every thread and greenlet of the workers, without stopping them."""
    _no_pid_file(pid_file, admin_socket, "backtraces")
    result = _call(admin_socket, "backtraces", app=app, worker=worker)
    for row in result["workers"]:
        click.echo(f"===== {row['app']} worker {row['pid']} =====")
        click.echo(row["text"])



@main.command("config")
@click.argument("kind", type=click.Choice(["nginx", "apache", "systemd", "logrotate"]))
@click.argument("app_dir", required=False, type=click.Path(file_okay=False))
@click.option("--listen", default=None, metavar="ADDRESS",
              help="nginx/apache: address the site listens on [default: 80 / *:80].")
@click.option("--ssl-certificate", default=None, metavar="PATH",
              help="nginx: also listen with TLS (on --ssl-listen) with this certificate "
              "(a path on the host, with --ssl-certificate-key).")
@click.option("--ssl-certificate-key", default=None, metavar="PATH",
              help="nginx: the private key of --ssl-certificate.")
@click.option("--ssl-listen", default=None, metavar="ADDRESS",
              help="nginx: address of the TLS listener [default: 443].")
@click.option("--railcar", "railcar_path", default=None, metavar="PATH",
              help="systemd: the railcar executable [default: the one running now].")
@click.option("--service", default="railcar", show_default=True,
              help="logrotate: the systemd unit to signal when there is no pid_file.")
@click.option("-o", "--output", default=None, metavar="PATH", help="Write here, not stdout.")
@_start_options
def config_command(kind, app_dir, listen, ssl_certificate, ssl_certificate_key, ssl_listen,
                   railcar_path, service, output, **values) -> None:
    """Render the nginx site, Apache vhost, systemd unit or logrotate file for --config FILE,
    or for APP_DIR with the options `railcar start` is given (the same server config)."""
    from . import config
    from .render import RenderError, render

    if not app_dir and not values.get("config"):
        raise click.UsageError("give --config FILE, or APP_DIR and the `railcar start` options")
    try:
        text = render(kind, config.load(values, app_dir, starting=False), listen=listen,
                      ssl_certificate=ssl_certificate, ssl_certificate_key=ssl_certificate_key,
                      ssl_listen=ssl_listen, railcar=railcar_path, service=service)
    except (ConfigError, RenderError) as exc:
        raise click.ClickException(str(exc)) from None
    if output:
        try:
            with open(output, "w") as handle:
                handle.write(text)
        except OSError as exc:
            raise click.ClickException(f"cannot write {output}: {exc.strerror}") from None
    else:
        click.echo(text, nl=False)


if __name__ == "__main__":
    main()
