"""What the `railcar` command needs beyond what a worker needs: the `server` extra.

`pip install railcar` brings only what workers import (gevent, httptools), so an app's
virtualenv can pin any click, Jinja2 or psutil it likes. The master and the CLI also need the
libraries of `railcar[server]`; `require_server()` checks for them before the CLI imports
any, so a virtualenv without the extra gets one plain line instead of a traceback.
"""

from __future__ import annotations

import importlib.util
import sys

EXTRA = "server"
# import name -> distribution name, as pyproject.toml's `server` extra lists them
SERVER_MODULES = {"click": "click", "psutil": "psutil", "jinja2": "jinja2",
                  "prometheus_client": "prometheus-client"}


def missing_server_modules() -> list[str]:
    """The distributions of the server extra whose module cannot be found."""
    return [dist for module, dist in SERVER_MODULES.items()
            if importlib.util.find_spec(module) is None]


def require_server() -> None:
    """Exit with status 1 and one line naming the extra when any of its modules is missing."""
    missing = missing_server_modules()
    if missing:
        sys.stderr.write(
            f"railcar: the railcar command needs the '{EXTRA}' extra, which this environment "
            f"({sys.executable}) lacks ({', '.join(missing)} missing): "
            f"pip install 'railcar[{EXTRA}]'\n")
        sys.exit(1)
