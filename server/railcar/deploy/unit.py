"""The systemd unit of the server on a host (/etc/systemd/system/railcar-APP.service).

Rendered from the same template as `railcar config systemd` (templates/railcar.service.j2):
Type=notify, the master in the foreground with the server's own command line
(command.start_argv, daemon=False), User= the app account, sandboxed, logging to the
journal. `railcar.systemd`: auto (a unit when systemd runs on the host), true or false (then
the server is a `railcar start --daemon`). Only `fab setup` (root) installs it.
"""

from __future__ import annotations

import posixpath
import shlex

from ..render import render_systemd_unit
from ..settings import BY_NAME
from ..supervision import retire_timeout
from .command import start_argv
from .paths import Paths
from .remote import Remote
from .settings import DeployConfig

UNIT_DIR = "/etc/systemd/system"

# $1 unit name, $2 "changed" if the unit file changed: reload systemd, enable the unit, and
# restart it if it runs (a changed unit takes effect now; the app is briefly down).
UNIT_ENABLE = r'''
unit=$1 changed=$2
if [ "$changed" = changed ]; then systemctl daemon-reload || exit 1; fi
systemctl is-enabled --quiet "$unit" 2>/dev/null || systemctl enable --quiet "$unit" || exit 1
if [ "$changed" = changed ]; then systemctl try-restart "$unit" || exit 1; fi
'''


def unit_name(config: DeployConfig) -> str:
    return f"railcar-{config.app}.service"


def systemd_mode(config: DeployConfig) -> str:
    """"auto" (a unit when systemd runs on the host), "yes" or "no", for the scripts."""
    return "auto" if config.systemd == "auto" else ("yes" if config.systemd else "no")


def uses_systemd(remote: Remote, config: DeployConfig) -> bool:
    if config.systemd == "auto":
        return remote.test(["test", "-d", "/run/systemd/system"])
    return bool(config.systemd)


def render_unit(paths: Paths, config: DeployConfig) -> str:
    """The unit from the same template as `railcar config systemd`: the master in the
    foreground (Type=notify), started with the server's own command line, logging to the
    journal; its stop timeout from the same rule (supervision.retire_timeout) for the
    server's defaults, which the deploy's command line keeps. A release's railcar.toml that
    raises boot_timeout, graceful_timeout or long_lived_timeout is not read here: the master
    asks systemd for the longer start or stop itself (EXTEND_TIMEOUT_USEC: launcher,
    master.Master.shutdown)."""
    argv = start_argv(paths, config, daemon=False)
    return render_systemd_unit(
        shlex.join(argv), [config.app], BY_NAME["boot_timeout"].default,
        retire_timeout(BY_NAME["graceful_timeout"].default,
                       BY_NAME["long_lived_timeout"].default),
        source=f"{config.app} on this host",
        rendered_by="`fab setup` (railcar.deploy)", user=config.user, group=config.user,
        read_write_paths=[paths.shared, paths.run, paths.log])


def ensure_unit(root: Remote, paths: Paths, config: DeployConfig) -> bool:
    """Install and enable the systemd unit (`root`: an elevated Remote); returns whether it
    changed; a changed unit of a running service is restarted. Idempotent."""
    path = posixpath.join(UNIT_DIR, unit_name(config))
    changed = root.write(path, render_unit(paths, config), mode=0o644)
    root.script(UNIT_ENABLE, unit_name(config), "changed" if changed else "same",
                label="enable-unit")
    return changed
