"""gc_freeze: with smart spawning the preloader freezes what the app's import made before it
forks, so the workers start with a frozen permanent generation; --no-gc-freeze leaves it
empty, and so does direct spawning (nothing is forked)."""

from __future__ import annotations

import pytest

APP = '''
import gc
IMPORTED = [{"n": n} for n in range(1000)]      # objects made at import
def application(environ, start_response):
    body = f"{gc.get_freeze_count()} {gc.isenabled()}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
'''


@pytest.mark.parametrize("args, frozen", [
    ((), True),                                           # the default
    (("--gc-freeze",), True),
    (("--no-gc-freeze",), False),
    (("--spawn-method", "direct"), False),
])
def test_workers_start_with_the_import_frozen(railcar, tmp_path, args, frozen):
    app = tmp_path / "app"
    app.mkdir()
    (app / "wsgi.py").write_text(APP)
    server = railcar().start(str(app), *args)
    count, enabled = server.get("/").text.split()
    assert (int(count) > 1000) is frozen and (int(count) == 0) is not frozen
    assert enabled == "True"          # the collector still runs in the workers
    server.stop()
