"""Packaging: `pip install railcar` brings only what a worker imports (gevent, httptools and
their own dependencies); the master's libraries are the `server` extra. Proven on real
virtualenvs: the installed set, a worker serving from a venv holding nothing else, an app
pinned to old Flask 1.x, Jinja2 2.x and click 7 served by a master on current ones, and the
`railcar` command's one-line refusal without the extra."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import wait_for

# In a venv: the distributions installed, and the closure of what gevent and httptools
# require (requirements behind an `extra` marker left out; other markers evaluated the way
# pip does when `packaging` is there, else kept).
LIST_DISTRIBUTIONS = r'''
import json, re, sys
from importlib import metadata
names = lambda n: re.sub(r"[-_.]+", "-", n).lower()
installed = {names(d.metadata["Name"]) for d in metadata.distributions()}
try:
    from packaging.requirements import Requirement
except ImportError:
    Requirement = None
closure, todo = set(), ["gevent", "httptools"]
while todo:
    name = todo.pop()
    if name in closure:
        continue
    closure.add(name)
    try:
        requires = metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        continue
    for line in requires:
        if "extra" in line.partition(";")[2]:
            continue
        if Requirement is not None:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate():
                continue
            todo.append(names(req.name))
        else:
            todo.append(names(re.split(r"[ ;<>=!~\[(]", line, 1)[0]))
print(json.dumps({"installed": sorted(installed), "closure": sorted(closure)}))
'''

SERVER_LIBRARIES = {"click", "psutil", "jinja2", "prometheus-client"}

# Served by a worker whose venv holds railcar alone: the top-level modules loaded in the
# worker that are not the standard library's nor the app itself, each with the distributions
# it comes from (modules without a file, which compiled extensions make, left out).
MODULES_APP = r'''
import json, sys
from importlib import metadata

def application(environ, start_response):
    owners = metadata.packages_distributions()
    loaded = sorted({name.partition(".")[0] for name in list(sys.modules)}
                    - set(sys.stdlib_module_names) - {"__main__", "__mp_main__", __name__})
    loaded = [name for name in loaded
              if getattr(sys.modules.get(name), "__file__", None) or name in owners]
    body = json.dumps({name: owners.get(name, ["?"]) for name in loaded}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]
'''

OLD_FLASK_PINS = ["Flask==1.1.4", "Jinja2==2.11.3", "click==7.1.2", "itsdangerous==1.1.0",
                  "Werkzeug==1.0.1", "MarkupSafe==2.0.1"]

OLD_FLASK_APP = '''
import click, flask, jinja2, werkzeug
from flask import Flask, render_template_string

app = Flask(__name__)

@app.route("/")
def index():
    return render_template_string(
        "flask {{ f }} jinja2 {{ j }} click {{ c }} werkzeug {{ w }}",
        f=flask.__version__, j=jinja2.__version__, c=click.__version__, w=werkzeug.__version__)
'''


def distributions(python: Path) -> dict:
    result = subprocess.run([str(python), "-c", LIST_DISTRIBUTIONS], capture_output=True,
                            text=True, timeout=60, check=True)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def core_venv(make_venv, wheelhouse, tmp_path_factory):
    """A fresh venv, and what `pip install railcar` (the built wheel) added to it."""
    path = tmp_path_factory.mktemp("core") / "venv"
    python = make_venv(path, with_railcar=False)
    before = set(distributions(python)["installed"])
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                    str(wheelhouse), "railcar"], check=True, timeout=600)
    after = distributions(python)
    return python, set(after["installed"]) - before, set(after["closure"])


def test_pip_install_railcar_adds_only_gevent_httptools_and_their_dependencies(core_venv):
    python, added, closure = core_venv
    assert {"railcar", "gevent", "httptools"} <= added
    assert added - {"railcar"} <= closure, f"not needed by a worker: {added - closure}"
    assert not added & SERVER_LIBRARIES


def test_a_worker_imports_nothing_beyond_railcar_gevent_and_httptools(core_venv, railcar,
                                                                      tmp_path):
    """The venv holds railcar's core alone, so a worker that boots and serves from it
    (both spawn methods, with the health check, a request deadline and an access log, which
    load their own code paths) needs nothing else; and every module it loaded comes from
    railcar, gevent, httptools or their dependencies (or the venv's own seed packages)."""
    python, _, closure = core_venv
    app = tmp_path / "app"
    app.mkdir()
    (app / "wsgi.py").write_text(MODULES_APP)
    allowed = closure | {"railcar", "pip", "setuptools", "wheel"}
    for method in ("smart", "direct"):
        server = railcar().start(str(app), "--python", str(python), "--spawn-method", method,
                                 "--health-path", "/", "--max-request-time", "30",
                                 "--access-log", str(tmp_path / f"access-{method}.log"))
        loaded = server.get("/").json()
        assert "railcar" in loaded and "gevent" in loaded and "httptools" in loaded
        outside = {name: owners for name, owners in loaded.items()
                   if not {re.sub(r"[-_.]+", "-", o).lower() for o in owners} & allowed}
        assert not outside, f"{method}: the worker loaded {outside}"
        assert not set(loaded) & {"click", "psutil", "jinja2", "prometheus_client"}
        backtraces = server.cli("backtraces")
        assert backtraces.returncode == 0 and "Greenlet" in backtraces.stdout
        server.stop()


def test_the_railcar_command_without_the_server_extra_names_it(core_venv):
    python, _, _ = core_venv
    result = subprocess.run([str(python.parent / "railcar"), "status"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert "pip install 'railcar[server]'" in line and str(python) in line


def test_an_app_pinned_to_flask_1_runs_under_railcar(make_venv, railcar, tmp_path):
    """Flask 1.1, Jinja2 2.11 and click 7 in the app's venv (from the index), the master on
    the current ones: `pip install railcar` does not pull the app's pins up."""
    python = make_venv(tmp_path / "venv")
    subprocess.run([str(python), "-m", "pip", "install", "-q", *OLD_FLASK_PINS], check=True,
                   timeout=600)
    app = tmp_path / "oldflask"
    app.mkdir()
    (app / "wsgi.py").write_text(OLD_FLASK_APP)
    server = railcar().start(str(app), "--python", str(python), "--workers", "2",
                             workers_ready=2)
    for _ in range(4):
        response = server.get("/")
        assert response.status_code == 200
        assert response.text == "flask 1.1.4 jinja2 2.11.3 click 7.1.2 werkzeug 1.0.1"
    assert {w["release"] for w in server.workers()} == {str(app.resolve())}
    server.stop()
    wait_for(lambda: server.proc.poll() is not None, 30, what="the master to exit")
