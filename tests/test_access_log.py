"""Access log formats, request ids and queue time, on a real railcar; USR1 reopens the log."""

from __future__ import annotations

import json
import os
import re
import signal
import time

import requests

from conftest import free_port, wait_for, write_app

APP = '''
def application(environ, start_response):
    if environ["PATH_INFO"] == "/own-id":
        start_response("200 OK", [("X-Request-Id", "app-chose-this")])
        return [b"own"]
    body = environ["HTTP_X_REQUEST_ID"].encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
'''


def log_lines(path, count: int) -> list[str]:
    """The first `count` lines of the access log, waited for."""
    wait_for(lambda: path.exists() and len(path.read_text().splitlines()) >= count, 15,
             what=f"{count} access log lines")
    return path.read_text().splitlines()


def start(railcar, tmp_path, *args):
    access = tmp_path / "access.log"
    server = railcar().start(str(write_app(tmp_path / "app", APP)), "--workers", "1",
                             "--access-log", str(access), *args)
    return server, access


def test_json_lines_carry_the_request_id_the_client_sent(railcar, tmp_path):
    server, access = start(railcar, tmp_path, "--access-log-format", "json")
    sent = "9f1c2d3e-4b5a-6789-abcd-ef0123456789"
    response = server.get("/items?page=2", headers={"X-Request-Id": sent,
                                                    "User-Agent": "probe/1.0",
                                                    "Referer": "http://example.test/from"})
    assert response.text == sent                       # the app got it in its environ
    assert response.headers["X-Request-Id"] == sent    # and the client got it back
    [line] = log_lines(access, 1)
    record = json.loads(line)
    assert record["request_id"] == sent
    assert record["method"] == "GET" and record["path"] == "/items"
    assert record["query"] == "page=2" and record["protocol"] == "HTTP/1.1"
    assert record["status"] == 200 and record["bytes"] == len(sent)
    assert record["remote_addr"] == "127.0.0.1"
    assert record["user_agent"] == "probe/1.0"
    assert record["referer"] == "http://example.test/from"
    assert 0 <= record["duration"] < 5
    assert record["queue_time"] is None                # no X-Request-Start was sent
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", record["time"])
    # An app that sets its own X-Request-Id keeps it, sent once.
    own = server.get("/own-id", headers={"X-Request-Id": sent})
    assert own.headers["X-Request-Id"] == "app-chose-this"
    # A request refused by the parser is logged as a JSON line too.
    with server.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")
    records = [json.loads(line) for line in log_lines(access, 3)]
    assert records[2]["status"] == 400


def test_generated_request_ids_are_unique_and_bad_ones_replaced(railcar, tmp_path):
    server, access = start(railcar, tmp_path, "--access-log-format", "json")
    session = requests.Session()
    ids = [session.get(server.url + "/").headers["X-Request-Id"] for _ in range(50)]
    assert len(set(ids)) == 50
    assert all(re.fullmatch(r"[0-9a-f]{32}", rid) for rid in ids)
    bad = ["x" * 129, "has space", "semi;colon", "quote\"d", "<script>"]
    for value in bad:
        response = session.get(server.url + "/", headers={"X-Request-Id": value})
        assert response.text == response.headers["X-Request-Id"]
        assert re.fullmatch(r"[0-9a-f]{32}", response.text), value
    records = [json.loads(line) for line in log_lines(access, 55)]
    assert [r["request_id"] for r in records[:50]] == ids


def test_text_format_is_unchanged_and_usr1_reopens_the_access_log(railcar, tmp_path):
    server, access = start(railcar, tmp_path)
    server.get("/a?x=1")
    [line] = log_lines(access, 1)
    assert re.fullmatch(r'127\.0\.0\.1 - - \[[^\]]+\] "GET /a\?x=1 HTTP/1\.1" 200 32 \d+\.\d',
                        line), line
    rotated = tmp_path / "access.log.1"
    os.rename(access, rotated)             # what logrotate does before its postrotate
    server.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: "log files reopened" in server.log(), 10, what="the reopen")

    def logged_after_reopen():
        server.get("/b")
        return access.exists() and "/b" in access.read_text()

    wait_for(logged_after_reopen, 15, what="a line in the new access log")
    assert "/b" not in rotated.read_text()


def _queue_metric(metrics_url: str) -> tuple[float, float]:
    text = requests.get(metrics_url, timeout=10).text
    count = re.search(r'^railcar_request_queue_seconds_count\{app="app"\} (\S+)$', text, re.M)
    total = re.search(r'^railcar_request_queue_seconds_sum\{app="app"\} (\S+)$', text, re.M)
    return (float(count.group(1)), float(total.group(1))) if count and total else (0.0, 0.0)


def test_queue_time_from_a_trusted_proxy_only(railcar, tmp_path):
    metrics = free_port()
    server, access = start(railcar, tmp_path, "--access-log-format", "json",
                           "--metrics-bind", f"127.0.0.1:{metrics}")
    now = time.time()
    # Apache's t=microseconds, nginx's t=seconds.millis, and plain numbers.
    for value in (f"t={int((now - 0.25) * 1e6)}", f"t={now - 0.25:.3f}",
                  f"{int((now - 0.25) * 1e3)}"):
        server.get("/", headers={"X-Request-Start": value})
    server.get("/", headers={"X-Request-Start": "t=garbage"})
    server.get("/", headers={"X-Request-Start": f"t={now + 3600:.3f}"})   # in the future
    records = [json.loads(line) for line in log_lines(access, 5)]
    for record in records[:3]:
        assert 0.2 <= record["queue_time"] < 5, record
    assert records[3]["queue_time"] is None and records[4]["queue_time"] is None
    url = f"http://127.0.0.1:{metrics}/metrics"
    count, total = wait_for(lambda: _queue_metric(url)[0] >= 3 and _queue_metric(url), 10,
                            what="the queue histogram")
    assert count == 3 and 0.6 <= total < 15


def test_queue_time_is_ignored_from_untrusted_peers(railcar, tmp_path):
    server, access = start(railcar, tmp_path, "--access-log-format", "json",
                           "--trusted-proxy", "10.0.0.0/8")
    server.get("/", headers={"X-Request-Start": f"t={time.time() - 1:.3f}"})
    [line] = log_lines(access, 1)
    assert json.loads(line)["queue_time"] is None


def test_error_answers_carry_the_request_id(railcar, tmp_path):
    app = write_app(tmp_path / "app", '''
def application(environ, start_response):
    raise RuntimeError("boom")
''')
    server = railcar().start(str(app), "--workers", "1")
    response = server.get("/", headers={"X-Request-Id": "abc-123"})
    assert response.status_code == 500 and response.headers["X-Request-Id"] == "abc-123"
