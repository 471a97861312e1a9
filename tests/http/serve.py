"""Run an HTTPServer on a fresh 127.0.0.1 port with the test apps, as a worker would.

Usage: python -m tests.http.serve [limits as KEY=VALUE ...]. Prints "READY <port>" once
serving; on SIGTERM retires (grace from RETIRE_GRACE=, default 5) and prints
"RETIRED True|False"; on SIGINT stops at once. Extra route /_stats answers server.stats().
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from railcar.http import HTTPServer, Limits  # noqa: E402
from tests.http.apps import app  # noqa: E402


def main(argv):
    options = dict(arg.split("=", 1) for arg in argv)
    grace = float(options.pop("RETIRE_GRACE", 5))
    unix = options.pop("UNIX", None)
    limits = Limits(**{k: type(getattr(Limits(), k))(v) for k, v in options.items()})
    if unix:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(unix)
        port = unix
    else:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
    listener.listen(128)
    server = None

    def stats_app(environ, start_response):
        if environ["PATH_INFO"] == "/_stats":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps(server.stats()).encode()]
        return app(environ, start_response)

    access = []
    server = HTTPServer([listener], stats_app, limits=limits, access_log=access.append,
                        base_environ={"SERVER_SOFTWARE": "railcar-test"})
    server.start()
    print("READY", port, flush=True)
    done = gevent.event.Event()

    def retire():
        print("RETIRED", server.retire(grace), flush=True)
        done.set()

    def stop():
        server.stop()
        print("STOPPED", flush=True)
        done.set()

    gevent.signal_handler(signal.SIGTERM, lambda: gevent.spawn(retire))
    gevent.signal_handler(signal.SIGINT, lambda: gevent.spawn(stop))
    gevent.signal_handler(signal.SIGUSR1, lambda: print("\n".join(access), flush=True))
    done.wait()
    sys.stdout.flush()


if __name__ == "__main__":
    main(sys.argv[1:])
