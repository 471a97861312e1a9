"""examples/hello with the serving process's pid in an `X-Worker` header, so that
bench/trace_restart.py can tell which worker (old or new) answered each request."""

import os


def application(environ, start_response):
    body = b"Hello, world!\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                              ("X-Worker", str(os.getpid()))])
    return [body]
