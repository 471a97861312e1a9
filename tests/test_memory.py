"""What the server's processes import, which is most of what they cost in memory.

Whole-app memory (master, preloader, workers) is mostly the modules each process imports, so
these tests pin what stays out: gevent's plugin lookup (importlib.metadata, with email,
zipfile, csv...) unless a plugin is installed; in the master, the HTTP server (needed only
while an app is down or for the metrics endpoint), Jinja2 and prometheus-client; in a worker,
what only `railcar backtraces` needs. Real processes, and sys.modules or the mapped files
read from them: no size threshold that noise could move.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import requests

from conftest import write_app
from railcar.patching import declares_plugin, plugins_declared

PLUGIN = "[gevent.plugins.monkey.did_patch_all]\nmarker = plugin_marker:hook\n"

APP = '''
import sys


def application(environ, start_response):
    body = "\\n".join(sorted(sys.modules)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
'''


def make_distribution(site, name: str, entry_points: str | None) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    if entry_points is not None:
        (info / "entry_points.txt").write_text(entry_points)


def test_entry_points_text_declares_a_plugin_only_in_a_gevent_plugin_group():
    assert declares_plugin(PLUGIN)
    assert declares_plugin("[gevent.plugins.hub.periodic_monitor_thread_started]\nx = a:b\n")
    assert not declares_plugin("[console_scripts]\ngevent.plugins = a:b\n")
    # gevent's own: a warning about patching signal without os, which patch_all never does
    assert not declares_plugin("[gevent.plugins.monkey.will_patch_all]\n"
                               "signal_os_incompat = gevent.monkey:_subscribe_signal_os\n")
    assert not declares_plugin("")


def test_plugins_declared_looks_at_every_distribution_on_the_path(tmp_path):
    plain, plugged, eggs = tmp_path / "plain", tmp_path / "plugged", tmp_path / "eggs"
    make_distribution(plain, "quiet", "[console_scripts]\nquiet = quiet:main\n")
    make_distribution(plain, "bare", None)
    make_distribution(plugged, "loud", PLUGIN)
    (eggs / "old.egg" / "EGG-INFO").mkdir(parents=True)
    (eggs / "old.egg" / "EGG-INFO" / "entry_points.txt").write_text(PLUGIN)
    archive = tmp_path / "lib.zip"
    archive.write_bytes(b"PK\x05\x06" + bytes(18))
    missing = str(tmp_path / "missing")
    assert not plugins_declared([str(plain), missing])
    assert plugins_declared([str(plain), str(plugged)])
    assert plugins_declared([str(eggs)])
    assert plugins_declared([str(plain), str(archive)])     # a zip's metadata is not read


PROBE = """
import json, socket, sys
from railcar.patching import patch_all
patch_all()
import gevent.socket
print(json.dumps({"metadata": "importlib.metadata" in sys.modules,
                  "patched": socket.socket is gevent.socket.socket}))
"""


def run_probe(code: str, tmp_path, pythonpath: str | None = None) -> dict:
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture
def no_plugin():
    """This environment has no gevent plugin (with one, the lookup is rightly made)."""
    if plugins_declared():
        pytest.skip("a distribution here declares a gevent plugin")


def test_patch_all_skips_the_plugin_lookup_when_none_is_declared(tmp_path, no_plugin):
    assert run_probe(PROBE, tmp_path) == {"metadata": False, "patched": True}


def test_patch_all_calls_a_declared_plugin(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "plugin_marker", PLUGIN)
    marker = tmp_path / "called"
    (site / "plugin_marker.py").write_text(
        f"def hook(event):\n    open({str(marker)!r}, 'a').write(type(event).__name__)\n")
    assert run_probe(PROBE, tmp_path, str(site)) == {"metadata": True, "patched": True}
    assert marker.read_text() == "GeventDidPatchAllEvent"


MASTER_PROBE = """
import json, sys
from railcar.patching import patch_all
patch_all(ssl=False)
import railcar.launcher, railcar.config, railcar.master, railcar.process, railcar.pool
print(json.dumps(sorted(sys.modules)))
"""

NOT_IN_MASTER = ["importlib.metadata", "email", "zipfile", "csv", "ssl", "railcar.http",
                 "click", "railcar.cli", "html",
                 "railcar.responder", "httptools", "jinja2", "prometheus_client",
                 "railcar.metrics", "railcar.render", "railcar.status_table"]


def test_the_master_modules_import_no_cli_http_server_tls_templates_or_metrics(tmp_path,
                                                                              no_plugin):
    modules = set(run_probe(MASTER_PROBE, tmp_path))
    assert not modules & set(NOT_IN_MASTER)


def extension_files(names: list[str]) -> list[str]:
    """The file names of those of `names` that are shared-object modules here (built-in ones
    leave no trace in /proc/PID/maps)."""
    files = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec and spec.origin and spec.origin.endswith(".so"):
            files.append(os.path.basename(spec.origin))
    return files


def mapped_files(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return {os.path.basename(line.split()[-1]) for line in maps if "/" in line}


@pytest.fixture
def app_dir(tmp_path):
    return write_app(tmp_path / "app", APP)


def test_a_serving_master_and_its_workers_leave_out_what_they_do_not_use(railcar, app_dir,
                                                                        no_plugin):
    """After boot and requests: the master (no TLS app; the `railcar start` process, same pid,
    after it handed over to a fresh interpreter) has mapped neither the HTTP parser, ssl,
    click's uuid nor the extension modules importlib.metadata brings; a worker has not imported gevent.util
    (backtraces), importlib.metadata nor the master's libraries."""
    server = railcar().start(str(app_dir), "--workers", "2", workers_ready=2)
    for _ in range(20):
        worker_modules = set(requests.get(server.url + "/", timeout=10).text.split())
    assert "railcar.http" in worker_modules         # the probe sees a worker's modules
    assert not worker_modules & {"importlib.metadata", "email", "zipfile", "gevent.util",
                                 "click", "psutil", "jinja2", "prometheus_client"}
    # _uuid: click's (click.types imports uuid), left behind in the command's interpreter
    unwanted = extension_files(["httptools.parser.parser", "_csv", "_lzma", "_bz2", "_ssl",
                                "_uuid"])
    assert unwanted                                 # at least httptools' parser is one
    assert not mapped_files(server.proc.pid) & set(unwanted)
    server.stop()
