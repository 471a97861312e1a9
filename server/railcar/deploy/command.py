"""The server's command line on a host: `railcar start` of the server venv serving
DEPLOY_TO/current. The systemd unit (unit.py), the daemon (service.py) and the nginx site
(nginx.py, which renders from the same options) all start from it, so they cannot disagree.
It carries no value of the app's environment: that is the env file (--env-file)."""

from __future__ import annotations

from .paths import Paths
from .settings import DeployConfig


def start_argv(paths: Paths, config: DeployConfig, daemon: bool = True) -> list[str]:
    """The server's command line. A daemon logs to DEPLOY_TO/log/railcar.log; the master of
    the systemd unit (daemon=False) to stderr, which is the journal
    (`journalctl -u railcar-APP`)."""
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
