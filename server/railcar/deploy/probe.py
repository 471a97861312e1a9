"""Health check run ON THE HOST by the server's python: GET a path through the app's unix
socket until it answers 2xx/3xx, and check that every worker runs the expected release.

    python -m railcar.deploy.probe --socket S --path /health --admin-socket A --release DIR

Exit 0 when healthy, 1 with the reason on stderr. Bounded by --timeout seconds.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

MAX_HEAD = 64 * 1024        # bytes of status line and headers read at most
BODY_SHOWN = 2000           # bytes of the body kept for the reason of a failure


def get(path: str, unix_socket: str, timeout: float = 10) -> tuple[int, bytes]:
    """GET `path` through the app's unix socket: (status, the start of the body).

    One HTTP/1.0 request on its own connection (the server closes it after the answer),
    read with a plain socket: the publish on every host runs this, and http.client (with
    the email package it loads) would be most of that interpreter's start."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(unix_socket)
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n"
                     "User-Agent: railcar-probe\r\n\r\n".encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data or len(data) - data.index(b"\r\n\r\n") < BODY_SHOWN + 4:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_HEAD + BODY_SHOWN and b"\r\n\r\n" not in data:
                raise OSError(f"no end of the headers in {MAX_HEAD} bytes")
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    words = head.split(b"\r\n", 1)[0].split(None, 2)
    if len(words) < 2 or not words[0].startswith(b"HTTP/") or not words[1].isdigit():
        raise OSError(f"not an HTTP answer: {head[:80]!r}")
    return int(words[1]), body[:BODY_SHOWN]


def releases_served(admin_socket: str, app: str | None) -> set[str]:
    from railcar.control.client import call

    status = call(admin_socket, "status", timeout=10)
    return {w.get("release") for a in status["apps"] if app in (None, a["name"])
            for w in a["workers"] if w.get("state") == "ready"}


def check(args) -> str | None:
    """None when healthy, else why not."""
    try:
        status, body = get(args.path, args.socket)
    except OSError as exc:
        return f"GET {args.path} via {args.socket}: {exc}"
    if not 200 <= status < 400:
        return f"GET {args.path}: HTTP {status}: {body[:500].decode('utf-8', 'replace')}"
    if args.release and args.admin_socket:
        served = releases_served(args.admin_socket, args.app)
        want = os.path.realpath(args.release)
        if served != {want}:
            return f"workers serve {sorted(map(str, served))}, expected {want}"
    return None


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--admin-socket")
    parser.add_argument("--app")
    parser.add_argument("--release")
    parser.add_argument("--timeout", type=float, default=30)
    return parser


def wait_healthy(args) -> str | None:
    """Check until healthy (None) or --timeout passed (the last reason)."""
    deadline = time.monotonic() + args.timeout
    problem = "not checked"
    for _attempt in range(10_000):
        problem = check(args)
        if problem is None:
            return None
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    return f"unhealthy after {args.timeout:g} s: {problem}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    problem = wait_healthy(args)
    if problem is None:
        print(f"healthy: GET {args.path} answered")
        return 0
    print(problem, file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
