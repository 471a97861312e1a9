"""New connections go to the worker with the fewest open connections (railcar.balance):
the shared table itself, across real processes, and the split of a real railcar's workers."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from conftest import wait_for, write_app
from railcar import balance
from railcar.balance import LoadTable


def _child(fd: int, connections: int, ready_w: int, go_r: int) -> None:
    """In a forked process: take a slot, publish `connections`, say so, wait to be killed."""
    try:
        table = LoadTable(fd)
        table.publish(connections)
        os.write(ready_w, bytes([table.slot if table.slot is not None else 255]))
        os.read(go_r, 1)
    finally:
        os._exit(0)


def _spawn(fd: int, connections: int) -> tuple[int, int, int]:
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(fd, connections, ready_w, go_r)
    os.close(ready_w)
    os.close(go_r)
    slot = os.read(ready_r, 1)[0]
    os.close(ready_r)
    return pid, slot, go_w


def test_table_slots_counts_and_dead_workers():
    fd = balance.create()
    children = []
    try:
        mine = LoadTable(fd)
        assert mine.slot is not None
        mine.publish(10)
        assert mine.least_other() is None  # alone: nobody to defer to
        children.append(_spawn(fd, 7))
        children.append(_spawn(fd, 3))
        slots = {mine.slot} | {slot for _, slot, _ in children}
        assert len(slots) == 3  # one slot each
        assert mine.least_other() == 3
        # The least-loaded one dies without clearing its slot: it no longer counts, and
        # its slot is free for the next worker.
        pid, dead_slot, go_w = children.pop()
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(go_w)
        assert mine.least_other() == 7
        assert mine.counts[dead_slot] == 0
        children.append(_spawn(fd, 1))
        assert children[-1][1] == dead_slot
        assert mine.least_other() == 1
        # A worker that stops accepting leaves: the others stop deferring to it.
        mine.publish(0)
        assert mine.least_other() == 1
        mine.leave()
        assert mine.least_other() is None
    finally:
        for pid, _, go_w in children:  # each may hold the others' pipe ends: kill them
            os.close(go_w)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)


APP = '''
def application(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
'''


def _open_keepalive(port: int, count: int) -> list[socket.socket]:
    """`count` connections opened at once (as a proxy's pool or a load generator does),
    then each served one request; they stay open (keep-alive)."""
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10)
               for _ in range(count)]
    for sock in sockets:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for sock in sockets:
        data = b""
        while not data.endswith(b"ok"):
            chunk = sock.recv(4096)
            assert chunk, "connection closed before the response"
            data += chunk
    return sockets


@pytest.mark.parametrize("spawn_method", ["smart", "direct"])
def test_connections_split_evenly_between_workers(railcar, tmp_path, spawn_method):
    app = write_app(tmp_path / "app", APP)
    server = railcar().start(str(app), "--workers", "2", "--spawn-method", spawn_method,
                             workers_ready=2)
    total = 40
    sockets = []
    try:
        # All at once: every worker is woken for each, and which one wins the accept must
        # not decide the split.
        sockets += _open_keepalive(server.port, total)
        counts: list[int] = []

        def all_counted() -> bool:
            counts[:] = [w.get("connections", 0) for w in server.workers()]
            return len(counts) == 2 and sum(counts) == total

        wait_for(all_counted, 20, what="every connection in the workers' counts")
        assert max(counts) - min(counts) <= 2, counts
        # Connections that close are gone from the count: new ones go to the worker that
        # lost them.
        for sock in sockets[:10]:
            sock.close()
        del sockets[:10]
        wait_for(lambda: sum(w.get("connections", 0) for w in server.workers()) == total - 10,
                 20, what="the closed connections gone from the counts")
        sockets += _open_keepalive(server.port, 10)
        wait_for(all_counted, 20, what="every connection in the workers' counts")
        assert max(counts) - min(counts) <= 2, counts
    finally:
        for sock in sockets:
            sock.close()
    server.stop()
