"""railcar.http.requestinfo and the JSON access log line, in-process."""

from __future__ import annotations

import json
import os
import re

import pytest

from railcar.http.accesslog import json_line
from railcar.http.parser import RequestParser
from railcar.http.requestinfo import queue_time, request_id

NOW = 1_800_000_000.5


@pytest.mark.parametrize("value, waited", [
    ("t=1800000000.250", 0.25),            # nginx t=${msec}
    ("t=1800000000250000", 0.25),          # Apache %t: microseconds
    ("1800000000250", 0.25),               # milliseconds
    ("1800000000", 0.5),                   # seconds
    (" t=1800000000.5 ", 0.0),             # surrounding spaces, no wait at all
    ("t=1800000000.9", 0.0),               # up to a second ahead: clocks, rounding
])
def test_queue_time_formats(value, waited):
    assert queue_time(value, NOW) == pytest.approx(waited, abs=1e-6)


@pytest.mark.parametrize("value", ["", "t=", "t=abc", "t=1e9", "t=-5", "t=1_800_000_000",
                                   "t=nan", "t=1800000002.0",         # 1.5 s in the future
                                   "t=1700000000.0",                  # over a day ago
                                   "t=1800000000.5, t=1800000000.4"])  # two headers joined
def test_queue_time_refuses_what_is_not_a_recent_start(value):
    assert queue_time(value, NOW) is None


def test_request_ids_kept_when_safe_else_replaced():
    for kept in ("abc", "9f1c2d3e-4b5a-6789-abcd-ef0123456789", "a" * 128, "b64+/=:@~._-x"):
        assert request_id(kept) == kept
    for replaced in (None, "", "a" * 129, "two words", "a,b", "x\"y", "<x>", "é"):
        new = request_id(replaced)
        assert re.fullmatch(r"[0-9a-f]{32}", new) and new != replaced
    assert len({request_id(None) for _ in range(1000)}) == 1000


def test_new_request_ids_are_unique_and_differ_between_parent_and_forked_child():
    """New ids come from random bytes drawn in advance: a forked child (a worker) must not
    hand out the ids its parent has drawn but not used yet."""
    ids = {request_id(None) for _ in range(1000)}  # several draws
    assert len(ids) == 1000 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, then exit at once
        os.close(read)
        os.write(write, json.dumps([request_id(None) for _ in range(3)]).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    parent = [request_id(None) for _ in range(3)]
    assert not set(child) & set(parent) and not set(child) & ids


def test_json_line_of_a_request_and_of_one_refused_unparsed():
    parser = RequestParser(8190, 65536, 100, 0, 65536)
    data = b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\n\r\n"
    parser.feed(bytearray(data), len(data))
    request = parser.ready.popleft()
    environ = {"REMOTE_ADDR": "203.0.113.9", "HTTP_X_REQUEST_ID": "rid",
               "HTTP_USER_AGENT": "ua \"quoted\"", "HTTP_REFERER": "http://r/"}
    record = json.loads(json_line(environ, "127.0.0.1", request, 200, 5, 0.0123456789, 0.5))
    assert record == {**record, "remote_addr": "203.0.113.9", "method": "GET", "path": "/p",
                      "query": "q=1", "protocol": "HTTP/1.1", "status": 200, "bytes": 5,
                      "duration": 0.012346, "request_id": "rid", "queue_time": 0.5,
                      "user_agent": "ua \"quoted\"", "referer": "http://r/"}
    bare = json.loads(json_line(None, "127.0.0.1", None, 400, 0, 0.001, None))
    assert bare["method"] is None and bare["path"] is None and bare["request_id"] is None
    assert bare["remote_addr"] == "127.0.0.1" and bare["status"] == 400
