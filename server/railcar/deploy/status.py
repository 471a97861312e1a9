"""The running server as `fab` sees it: `railcar status` through the admin socket, and the
health check of a release (railcar.deploy.probe run on the host: health_path through the
app's unix socket, every ready worker on the release)."""

from __future__ import annotations

from . import releases as rel
from .paths import Paths
from .remote import Remote, RemoteError
from .settings import DeployConfig

STATUS_MARK = "railcar-status"
# The releases' inventory (LIST_SCRIPT: $1-$4), a line STATUS_MARK, then `railcar status` of
# the server venv ($5) through the admin socket ($6): `fab status` in one round trip.
STATUS_SCRIPT = rel.LIST_SCRIPT + f'echo {STATUS_MARK}\nexec "$5" status --admin-socket "$6"\n'


def status(remote: Remote, paths: Paths, as_json: bool = False) -> str:
    """`railcar status --json` of the server's venv; without `as_json`, where `current`
    points and its state (releases.summary), then `railcar status`: one round trip either
    way. Raises RemoteError when the server does not answer."""
    argv = [paths.railcar, "status", "--admin-socket", paths.admin_socket]
    if as_json:
        return remote.run(argv + ["--json"]).stdout
    result = remote.script(STATUS_SCRIPT, *rel.list_args(paths), paths.railcar,
                           paths.admin_socket, label="status", check=False)
    listing, _, text = result.stdout.partition(f"\n{STATUS_MARK}\n")
    if not result.ok:
        raise RemoteError(remote.name, remote.command(argv), result.exit_code,
                          text + result.stderr)
    return rel.summary(rel.parse_inventory(listing)) + "\n" + text


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
