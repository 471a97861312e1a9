"""The railcar server on a host: its virtualenv, its service, start, restart and status.

The server runs from DEPLOY_TO/railcar (a virtualenv holding this exact railcar version,
installed from the uploaded wheel) and serves DEPLOY_TO/current. When systemd runs on the
host it is a unit (from templates/railcar.service); otherwise a daemon started with
`railcar start --daemon`, its pid file, admin socket and log under DEPLOY_TO.
"""

from __future__ import annotations

import os
import posixpath
import shlex
from string import Template

from .paths import Paths
from .remote import Remote, RemoteError
from .settings import DeployConfig

TEMPLATES = os.path.join(os.path.dirname(__file__), "templates")
SERVER_PACKAGES = ("virtualenv",)   # the server venv builds the app venvs with it


def upload_wheels(remote: Remote, paths: Paths, wheels: list[str]) -> list[str]:
    """Upload the wheels the host does not have yet (temp name + rename); idempotent."""
    have = set(remote.run(["ls", "-1", paths.wheels], check=False).stdout.split())
    sent = []
    for wheel in wheels:
        name = os.path.basename(wheel)
        if name in have:
            continue
        target = posixpath.join(paths.wheels, name)
        remote.put(wheel, target + ".part")
        remote.run(["mv", "-f", target + ".part", target])
        sent.append(name)
    return sent


def ensure_server_venv(remote: Remote, paths: Paths, config: DeployConfig,
                       wheel_name: str) -> bool:
    """The server's virtualenv with this railcar wheel; returns whether it changed."""
    marker = posixpath.join(paths.server_venv, ".railcar-wheel")
    if (remote.read(marker) or "").strip() == wheel_name:
        return False
    if not remote.exists(paths.server_python):
        remote.run([config.python, "-m", "venv", paths.server_venv])
    remote.run([paths.server_python, "-m", "pip", "install", "-q",
                "--disable-pip-version-check", *config.pip_args, "--find-links", paths.wheels,
                posixpath.join(paths.wheels, wheel_name), *SERVER_PACKAGES])
    remote.write(marker, wheel_name + "\n")
    return True


def start_argv(paths: Paths, config: DeployConfig) -> list[str]:
    argv = [paths.railcar, "start", paths.current, "--name", config.app,
            "--bind", f"unix:{paths.app_socket}", "--workers", str(config.workers),
            "--admin-socket", paths.admin_socket, "--pid-file", paths.pid_file,
            "--log-file", paths.server_log, "--daemon"]
    for bind in config.bind:
        argv += ["--bind", bind]
    for name, value in sorted(config.env.items()):
        argv += ["--env", f"{name}={value}"]
    return argv


def uses_systemd(remote: Remote, config: DeployConfig) -> bool:
    if config.systemd == "auto":
        return remote.test(["test", "-d", "/run/systemd/system"])
    return bool(config.systemd)


def unit_name(config: DeployConfig) -> str:
    return f"railcar-{config.app}.service"


def render_unit(paths: Paths, config: DeployConfig) -> str:
    with open(os.path.join(TEMPLATES, "railcar.service")) as handle:
        template = Template(handle.read())
    return template.substitute(
        app=config.app, pid_file=paths.pid_file, exec_start=shlex.join(start_argv(paths, config)),
        exec_stop=shlex.join([paths.railcar, "stop", "--admin-socket", paths.admin_socket]))


def ensure_unit(remote: Remote, paths: Paths, config: DeployConfig) -> bool:
    """Install and enable the systemd unit; returns whether it changed. Idempotent."""
    path = f"/etc/systemd/system/{unit_name(config)}"
    changed = remote.write(path, render_unit(paths, config))
    if changed:
        remote.run(["systemctl", "daemon-reload"])
        remote.run(["systemctl", "enable", unit_name(config)])
    return changed


def running(remote: Remote, paths: Paths) -> bool:
    return remote.test([paths.railcar, "status", "--json", "--admin-socket", paths.admin_socket])


def status(remote: Remote, paths: Paths, as_json: bool = False) -> str:
    argv = [paths.railcar, "status", "--admin-socket", paths.admin_socket]
    return remote.run(argv + (["--json"] if as_json else [])).stdout


def start(remote: Remote, paths: Paths, config: DeployConfig) -> str:
    """Start the server on `current`; raises RemoteError with its report if it fails."""
    if uses_systemd(remote, config):
        remote.run(["systemctl", "start", unit_name(config)])
        return f"started {unit_name(config)}"
    return remote.run(start_argv(paths, config)).stdout.strip()


def restart(remote: Remote, paths: Paths, config: DeployConfig) -> str:
    """Rolling restart onto what `current` points to now (blocks until done); starts the
    server if it does not run. Raises RemoteError (with the app's traceback) on failure."""
    if not running(remote, paths):
        return start(remote, paths, config)
    result = remote.run([paths.railcar, "restart", config.app,
                         "--admin-socket", paths.admin_socket])
    return result.stdout.strip()


def stop(remote: Remote, paths: Paths, config: DeployConfig) -> None:
    if uses_systemd(remote, config):
        remote.run(["systemctl", "stop", unit_name(config)], check=False)
    elif running(remote, paths):
        remote.run([paths.railcar, "stop", "--admin-socket", paths.admin_socket], check=False)


def health_check(remote: Remote, paths: Paths, config: DeployConfig, release_dir: str) -> str:
    """GET health_path through the app's unix socket until healthy, and check that every
    worker serves `release_dir`. Raises RemoteError when unhealthy."""
    result = remote.run([paths.server_python, "-m", "railcar.deploy.probe",
                         "--socket", paths.app_socket, "--path", config.health_path,
                         "--admin-socket", paths.admin_socket, "--app", config.app,
                         "--release", release_dir, "--timeout", str(config.health_timeout)])
    return result.stdout.strip()


__all__ = ["RemoteError"]
