"""A small, bounded load generator for tests: real HTTP over loopback, every outcome recorded.

Each client is a thread with its own http.client connection: in "keepalive" mode it reuses
one connection, in "close" mode it opens a new connection per request. Failures (connection
errors, non-200 statuses) are recorded with the time they happened, never retried.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    started: float
    finished: float
    status: int | None
    body: bytes
    error: str | None = None


@dataclass
class Load:
    host: str
    port: int
    path: str = "/"
    clients: int = 8
    mode: str = "keepalive"          # or "close"
    max_seconds: float = 60.0
    max_requests: int = 200_000
    headers: dict = field(default_factory=dict)     # sent with every request (e.g. Host)
    ssl_context: Any = None          # an ssl.SSLContext: HTTPS instead of HTTP
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self):
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def start(self) -> "Load":
        self._deadline = time.monotonic() + self.max_seconds
        for _ in range(self.clients):
            thread = threading.Thread(target=self._client, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> "Load":
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self

    def _record(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def _running(self) -> bool:
        return (not self._stop.is_set() and time.monotonic() < self._deadline
                and len(self.outcomes) < self.max_requests)

    def _client(self) -> None:
        conn = None
        while self._running():
            started = time.monotonic()
            try:
                if conn is None:
                    conn = (http.client.HTTPSConnection(self.host, self.port, timeout=30,
                                                        context=self.ssl_context)
                            if self.ssl_context else
                            http.client.HTTPConnection(self.host, self.port, timeout=30))
                headers = dict(self.headers)
                if self.mode == "close":
                    headers["Connection"] = "close"
                conn.request("GET", self.path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                self._record(Outcome(started, time.monotonic(), response.status, body))
                if self.mode == "close" or response.will_close:
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as exc:
                self._record(Outcome(started, time.monotonic(), None, b"", repr(exc)))
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    # --- reading the results --------------------------------------------------------------
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.error or o.status != 200]

    def started_after(self, moment: float) -> list[Outcome]:
        return [o for o in self.outcomes if o.started >= moment]


def main(argv: list[str] | None = None) -> None:
    """`python loadgen.py HOST PORT --stop-file F`: run a Load until F exists (or the bounds
    are reached), then print its outcome as JSON: a load in another network namespace
    (`ip netns exec NS python loadgen.py ...`) reports back to the test that started it."""
    import argparse
    import json
    import os

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("--path", default="/")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--stop-file", required=True)
    args = parser.parse_args(argv)
    load = Load(args.host, args.port, args.path, clients=args.clients,
                max_seconds=args.max_seconds).start()
    while load._running() and not os.path.exists(args.stop_file):
        time.sleep(0.1)
    load.stop()
    failures = load.failures()
    print(json.dumps({
        "requests": len(load.outcomes),
        "failures": len(failures),
        "first_failures": [{"status": o.status, "error": o.error, "body": o.body[:200].decode(
            "utf-8", "replace")} for o in failures[:5]],
        "bodies": sorted({o.body.decode("utf-8", "replace") for o in load.outcomes
                          if o.status == 200})[:20],
    }))


if __name__ == "__main__":
    main()
