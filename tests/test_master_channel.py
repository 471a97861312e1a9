"""The master's channel to its workers and preloaders, against real railcar processes:
overlapping calls to one worker each get their own reply, and nothing a worker or preloader
writes (on its channel or its output) breaks the master."""

from __future__ import annotations

import threading

from conftest import write_app
from loadgen import Load
from railcar.control import client

APP = '''
import os

def application(environ, start_response):
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def overlapping_status(admin_socket: str, clients: int, rounds: int) -> list[dict]:
    """`status` from `clients` threads at once, `rounds` times each: every answer."""
    answers: list[dict] = []
    lock = threading.Lock()

    def ask():
        for _ in range(rounds):
            answer = client.call(admin_socket, "status", timeout=30)
            with lock:
                answers.append(answer)

    threads = [threading.Thread(target=ask, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return answers


def test_overlapping_status_calls_each_get_their_own_reply(railcar, tmp_path):
    server = railcar().start(str(write_app(tmp_path / "app", APP)), "--workers", "4",
                             workers_ready=4)
    load = Load("127.0.0.1", server.port, clients=4, max_seconds=60).start()
    try:
        answers = overlapping_status(server.admin_socket, clients=8, rounds=6)
    finally:
        load.stop()
    assert len(answers) == 48
    rows = [w for answer in answers for app in answer["apps"] for w in app["workers"]
            if w["state"] == "ready"]
    missing = [w for w in rows if w["requests"] is None or w["in_flight"] is None]
    assert len(rows) >= 48 * 4 and not missing, f"{len(missing)} of {len(rows)}: {missing[:3]}"
    assert not load.failures(), load.failures()[:3]
    server.stop()
