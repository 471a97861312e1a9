"""An I/O-bound app: each request waits 20 ms, as if for a database or an upstream API.

`time.sleep` stands in for the I/O. gevent servers monkey-patch it, so a waiting request
yields to the others; the ceiling is then concurrency / 0.02 s (64 connections: 3,200 req/s).
"""

import time

DELAY = 0.02
BODY = b"slept 20 ms\n"


def application(environ, start_response):
    time.sleep(DELAY)
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]
