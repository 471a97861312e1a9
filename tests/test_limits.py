"""Limits per app against real processes: each over-limit worker is replaced (new one ready
first, old one retires gracefully) without failing other clients' requests; overload gets a
fast 503; the pool grows and shrinks; metrics and `status --requests` report it all."""

from __future__ import annotations

import json
import threading
import re
import time

import requests

from conftest import free_port, gone, wait_for, write_app
from loadgen import Load

APP = '''
import os, time
hog = []

def slow_function(seconds):
    time.sleep(seconds)

def application(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/sleep":
        slow_function(float(environ["QUERY_STRING"] or 1))
    elif path == "/grow":
        hog.append(b"x" * (int(environ["QUERY_STRING"]) << 20))
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def make_app(tmp_path):
    return str(write_app(tmp_path / "app", APP))


def in_background(function, *args):
    """Run function(*args) in a thread; returns (thread, list that receives its result)."""
    box: list = []
    thread = threading.Thread(target=lambda: box.append(function(*args)), daemon=True)
    thread.start()
    return thread, box


def ready_pids(server) -> set[int]:
    return {w["pid"] for w in server.workers()}


def test_worker_over_memory_limit_is_replaced_without_failures(railcar, tmp_path):
    server = railcar().start(make_app(tmp_path), "--workers", "1", "--memory-limit", "80")
    [old] = ready_pids(server)
    load = Load("127.0.0.1", server.port, clients=4, max_seconds=30).start()
    slow, answers = in_background(server.get, "/sleep?4")
    time.sleep(0.3)
    assert server.get("/grow?120").status_code == 200
    new = wait_for(lambda: (ready_pids(server) - {old}) or None, 20, what="a replacement")
    slow.join(timeout=20)
    wait_for(lambda: gone(old), 20, what="the old worker to exit")
    load.stop()
    assert answers and answers[0].status_code == 200 and answers[0].text == str(old)
    assert len(load.outcomes) > 50 and not load.failures(), load.failures()[:3]
    assert server.get("/").text == str(next(iter(new)))
    assert "memory_limit: USS" in server.log()
    [app] = server.status()["apps"]
    assert app["replacements"] == {"memory_limit": 1}
    server.stop()


def test_memory_limit_counts_what_a_worker_owns_not_what_it_shares(railcar, tmp_path):
    """Workers forked from the preloader share the 120 MiB it loaded at import: their RSS is
    over memory_limit, what each owns (USS) is not, so none is replaced while idle; one that
    grows its own memory past the limit is."""
    port = free_port()
    app = write_app(tmp_path / "app", "ballast = b'x' * (120 << 20)\n" + APP)
    server = railcar().start(str(app), "--workers", "2", "--memory-limit", "100",
                             "--metrics-bind", f"127.0.0.1:{port}", workers_ready=2)
    pids = ready_pids(server)
    time.sleep(5)                                   # five supervision rounds, no request
    [app_status] = server.status()["apps"]
    assert app_status["replacements"] == {} and ready_pids(server) == pids
    assert "replacing worker" not in server.log()
    for row in app_status["workers"]:
        assert row["rss"] > 120 << 20 and row["uss"] < 100 << 20, row
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert metrics.count("railcar_worker_uss_bytes{") == 2
    assert metrics.count("railcar_worker_rss_bytes{") == 2
    assert " USS " in server.cli("status").stdout

    grown = int(server.get("/grow?110").text)       # now it owns 110 MiB more
    wait_for(lambda: gone(grown), 30, what="the grown worker to be replaced")
    assert ready_pids(server) - {grown} >= pids - {grown}
    assert "memory_limit: USS" in server.log()
    [app_status] = server.status()["apps"]
    assert app_status["replacements"] == {"memory_limit": 1}
    assert int(server.get("/").text) != grown
    server.stop()


def test_request_past_max_request_time_gets_504_and_worker_is_replaced(railcar, tmp_path):
    server = railcar().start(make_app(tmp_path), "--workers", "1", "--max-request-time", "1")
    [old] = ready_pids(server)
    load = Load("127.0.0.1", server.port, clients=4, max_seconds=30).start()
    started = time.monotonic()
    stuck = requests.get(server.url + "/sleep?30", timeout=15)
    took = time.monotonic() - started
    wait_for(lambda: (ready_pids(server) - {old}) or None, 20, what="a replacement")
    wait_for(lambda: gone(old), 20, what="the old worker to exit")
    load.stop()
    assert stuck.status_code == 504 and took < 5
    log = server.log()
    assert "ran past max_request_time" in log and "in slow_function" in log
    assert len(load.outcomes) > 50 and not load.failures(), load.failures()[:3]
    server.stop()


def test_max_requests_with_jitter_replaces_workers(railcar, tmp_path):
    server = railcar().start(make_app(tmp_path), "--workers", "2", "--max-requests", "30",
                             "--max-requests-jitter", "10", workers_ready=2)
    first = ready_pids(server)
    # A connection per request: kept-alive connections could all land on the newest worker
    # and leave a first one without traffic, never to reach its budget.
    load = Load("127.0.0.1", server.port, clients=2, mode="close", max_seconds=30,
                max_requests=4000).start()
    wait_for(lambda: not (ready_pids(server) & first) and len(ready_pids(server)) == 2, 25,
             what="both workers replaced")
    load.stop()
    assert not load.failures(), load.failures()[:3]
    replaced = re.findall(r"max_requests: served (\d+) requests \(limit (\d+)\)", server.log())
    assert len(replaced) >= 2, server.log()[-2000:]
    for served, budget in replaced:
        # Each worker gets its own budget of max_requests plus up to the jitter, and is
        # replaced only once it has served it.
        assert 30 <= int(budget) <= 40 and int(served) >= int(budget)
    server.stop()


def test_overload_gets_fast_503_with_retry_after(railcar, tmp_path):
    server = railcar().start(make_app(tmp_path), "--workers", "1",
                             "--max-concurrent-requests", "2")

    def timed_get():
        started = time.monotonic()
        response = requests.get(server.url + "/sleep?1.5", timeout=10)
        return response.status_code, response.headers.get("Retry-After"), \
            time.monotonic() - started

    threads = [in_background(timed_get) for _ in range(2)]
    time.sleep(0.3)
    threads += [in_background(timed_get) for _ in range(10)]
    for thread, _ in threads:
        thread.join(timeout=15)
    results = [box[0] for _, box in threads]
    assert len(results) == 12, "a request hung"
    ok = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(ok) == 2 and len(refused) == 10, results
    assert all(retry == "1" and took < 0.5 for _, retry, took in refused), refused
    server.stop()


def test_status_requests_lists_in_flight_requests(railcar, tmp_path):
    server = railcar().start(make_app(tmp_path), "--workers", "1")
    [pid] = ready_pids(server)
    thread, _ = in_background(server.get, "/sleep?3")
    time.sleep(0.8)
    as_json = server.cli("status", "--requests", "--json")
    as_text = server.cli("status", "--requests")
    thread.join(timeout=15)
    assert as_json.returncode == 0, as_json.stderr
    [row] = json.loads(as_json.stdout)["requests"]
    assert row["method"] == "GET" and row["path"] == "/sleep?3" and row["worker"] == pid
    assert row["client"].startswith("127.0.0.1:") and 0.5 < row["age"] < 3
    assert "/sleep?3" in as_text.stdout and str(pid) in as_text.stdout
    assert "no requests in flight" in server.cli("status", "--requests").stdout
    server.stop()


def test_prometheus_metrics(railcar, tmp_path):
    port = free_port()
    server = railcar().start(make_app(tmp_path), "--workers", "2", "--metrics-bind",
                             f"127.0.0.1:{port}", workers_ready=2)
    for _ in range(20):
        assert server.get("/").status_code == 200
    assert server.get("/missing", headers={"Host": ""}).status_code in (200, 400)

    def scrape():
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        return text if 'railcar_requests_total{app="app",status="2xx"} 2' in text else None

    text = wait_for(scrape, 10, interval=0.5, what="request counts in the metrics")
    assert 'railcar_request_duration_seconds_bucket{app="app",le="+Inf"} 2' in text
    assert 'railcar_workers{app="app",state="ready"} 2.0' in text
    assert 'railcar_requests_in_flight{app="app"} 0.0' in text
    assert text.count("railcar_worker_rss_bytes{") == 2
    assert 'railcar_restarts_total{app="app",outcome="ok"} 0.0' in text
    assert server.cli("restart").returncode == 0
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'railcar_restarts_total{app="app",outcome="ok"} 1.0' in text
    server.stop()


def test_dynamic_pool_grows_under_load_and_shrinks_when_idle(railcar, tmp_path):
    server = railcar().start(make_app(tmp_path), "--workers", "1", "--max-workers", "3",
                             "--idle-timeout", "2")
    load = Load("127.0.0.1", server.port, path="/sleep?0.3", clients=12, mode="close",
                max_seconds=40).start()
    try:
        wait_for(lambda: len(ready_pids(server)) == 3, 25, interval=0.5,
                 what="the pool to grow to 3")
        time.sleep(2)
        assert len(server.workers(None)) <= 3
    finally:
        load.stop()
    wait_for(lambda: len(ready_pids(server)) == 1, 20, interval=0.5,
             what="the pool to shrink back to 1")
    assert not load.failures(), load.failures()[:3]
    assert "growing the pool to 3" in server.log()
    server.stop()
