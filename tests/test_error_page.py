"""An app that failed to boot: its clients get a 503 at once, with the error page in
development mode and a plain 503 in production, until a worker is ready again."""

from __future__ import annotations

import os

import requests

from conftest import wait_for

BROKEN = 'import totally_missing_dependency_xyz\n'
GOOD = '''
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
'''


def start_broken(railcar, tmp_path, environment):
    app = tmp_path / "app"
    app.mkdir()
    (app / "wsgi.py").write_text(BROKEN)
    server = railcar().start(str(app), "--workers", "1", "--environment", environment,
                             wait=False)
    wait_for(lambda: os.path.exists(server.admin_socket) and
             server.status()["apps"][0]["error"], 30, what="the boot error")
    return server, app


def test_development_error_page_then_recovery(railcar, tmp_path):
    server, app = start_broken(railcar, tmp_path, "development")
    [response] = wait_for(lambda: _get(server), 10, what="an answer")
    assert response.status_code == 503
    assert response.headers["Content-Type"].startswith("text/html")
    assert "totally_missing_dependency_xyz" in response.text
    assert "Traceback" in response.text and "ModuleNotFoundError" in response.text
    (app / "wsgi.py").write_text(GOOD)
    assert server.cli("restart").returncode == 0
    for _ in range(5):
        assert server.get("/").text == "ok"
    server.stop()


def test_production_gets_plain_503_without_the_error(railcar, tmp_path):
    server, _ = start_broken(railcar, tmp_path, "production")
    [response] = wait_for(lambda: _get(server), 10, what="an answer")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"
    assert response.headers["Content-Type"] == "text/plain"
    assert "totally_missing" not in response.text
    assert "totally_missing_dependency_xyz" in server.log()
    server.stop()


def _get(server):
    try:
        return [requests.get(server.url + "/", timeout=2)]   # a 503 Response is falsy
    except requests.RequestException:
        return None
