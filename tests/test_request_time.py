"""max_request_time against a real `railcar start`: a request stuck in pure-Python CPU work
(which never yields to the event loop) is interrupted by the worker's CPU timer and answered
504 in about the limit, its stack logged; the other requests of that worker, in flight or
queued behind it, get their own answers; the worker is replaced without a failed request and
a new connection is served."""

from __future__ import annotations

import time

import requests

from conftest import gone, wait_for, write_app
from loadgen import Load
from test_limits import in_background, ready_pids

APP = '''
import os, time

def busy_function():
    n = 0
    while True:
        n += 1

def stubborn_function():
    swallowed = 0
    while True:
        try:
            busy_function()
        except BaseException:
            swallowed += 1      # the app swallows the interruption and carries on

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/spin":
        busy_function()
    elif path == "/stubborn":
        stubborn_function()
    elif path == "/sleep":
        time.sleep(float(environ["QUERY_STRING"] or 1))
    body = ("%s %s" % (os.getpid(), path)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''

LIMIT = 2.0


def timed_get(url: str) -> tuple[requests.Response | Exception, float]:
    started = time.monotonic()
    try:
        response: requests.Response | Exception = requests.get(url, timeout=30)
    except requests.RequestException as exc:
        response = exc
    return response, time.monotonic() - started


def test_cpu_bound_request_gets_504_and_others_their_own_answers(railcar, tmp_path):
    app = write_app(tmp_path / "app", APP)
    server = railcar().start(str(app), "--workers", "1", "--max-request-time", str(LIMIT))
    [old] = ready_pids(server)
    load = Load("127.0.0.1", server.port, path="/hello", clients=3, max_seconds=40).start()
    sleeper, slept = in_background(timed_get, server.url + "/sleep?1")
    time.sleep(0.3)     # the sleeper is in flight, then the worker's loop gets stuck
    spinner, spun = in_background(timed_get, server.url + "/spin")
    time.sleep(0.3)
    queued, answered = in_background(timed_get, server.url + "/queued")
    for thread in (spinner, sleeper, queued):
        thread.join(timeout=30)
    (stuck, took), = spun
    assert isinstance(stuck, requests.Response), stuck
    assert stuck.status_code == 504 and took < LIMIT + 4, (stuck.status_code, took)
    # The requests that waited behind the stuck one are answered, each with its own body.
    (other, _), = slept
    assert other.status_code == 200 and other.text == f"{old} /sleep"
    (later, _), = answered
    assert later.status_code == 200 and later.text.endswith(" /queued")
    log = wait_for(lambda: "in busy_function" in server.log() and server.log(), 10,
                   what="the stack in the log")
    assert "GET /spin from" in log and "ran past max_request_time" in log
    assert "GET /sleep from" not in log and "GET /queued from" not in log
    # The worker is replaced (new one ready first); nobody else saw a failure.
    new = wait_for(lambda: (ready_pids(server) - {old}) or None, 30, what="a replacement")
    wait_for(lambda: gone(old), 30, what="the old worker to exit")
    load.stop()
    assert len(load.outcomes) > 20 and not load.failures(), load.failures()[:3]
    assert all(o.body.endswith(b" /hello") for o in load.outcomes)
    fresh = requests.get(server.url + "/after", headers={"Connection": "close"}, timeout=10)
    assert fresh.status_code == 200 and fresh.text == f"{next(iter(new))} /after"
    server.stop()


def test_an_app_that_swallows_the_interruption_is_interrupted_again(railcar, tmp_path):
    app = write_app(tmp_path / "app", APP)
    server = railcar().start(str(app), "--workers", "1", "--max-request-time", "1",
                             "--graceful-timeout", "2")
    [old] = ready_pids(server)
    stuck, took = timed_get(server.url + "/stubborn")
    assert isinstance(stuck, requests.Response) and stuck.status_code == 504, stuck
    assert took < 6, took
    wait_for(lambda: "in stubborn_function" in server.log(), 10, what="the stack in the log")
    wait_for(lambda: (ready_pids(server) - {old}) or None, 30, what="a replacement")
    assert requests.get(server.url + "/", timeout=10).status_code == 200
    server.stop()
