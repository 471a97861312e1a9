"""The running server as `fab` sees it: `railcar status` through the admin socket, and the
health check of a release (railcar.deploy.probe run on the host: health_path through the
app's unix socket, every ready worker on the release)."""

from __future__ import annotations

from .paths import Paths
from .remote import Remote
from .settings import DeployConfig


def status(remote: Remote, paths: Paths, as_json: bool = False) -> str:
    """`railcar status` (or `--json`) of the server's venv; raises RemoteError when the
    server does not answer."""
    argv = [paths.railcar, "status", "--admin-socket", paths.admin_socket]
    return remote.run(argv + (["--json"] if as_json else [])).stdout


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
