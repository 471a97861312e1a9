"""The master's channel to its workers and preloaders, against real railcar processes:
overlapping calls to one worker each get their own reply, and nothing a worker or preloader
writes (on its channel or its output) breaks the master."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import requests

from conftest import free_port, railcar_command, wait_for, write_app
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
        cli = [subprocess.Popen(railcar_command() + ["status", "--json", "--admin-socket",
                                                     server.admin_socket],
                                stdout=subprocess.PIPE, text=True) for _ in range(4)]
        answers = overlapping_status(server.admin_socket, clients=8, rounds=6)
        answers += [json.loads(proc.communicate(timeout=30)[0]) for proc in cli]
    finally:
        load.stop()
    assert len(answers) == 52
    rows = [w for answer in answers for app in answer["apps"] for w in app["workers"]
            if w["state"] == "ready"]
    missing = [w for w in rows if w["requests"] is None or w["in_flight"] is None]
    assert len(rows) >= 52 * 4 and not missing, f"{len(missing)} of {len(rows)}: {missing[:3]}"
    assert not load.failures(), load.failures()[:3]
    server.stop()


HOSTILE_APP = '''
import gc, os, sys, time
from railcar.channel import Channel
from railcar.worker import Worker

BAD_STATS = [
    ["not", "an", "object"],
    {"requests": "many", "in_flight": 0},
    {"requests": 1, "in_flight": -1},
    {"requests": True, "in_flight": 0},
    {"requests": 1, "in_flight": 0, "status_counts": {"class-%d" % time.time_ns(): 1}},
    {"requests": 1, "in_flight": 0, "latency": {"buckets": [1, 0.5], "counts": [1], "sum": 1}},
    {"requests": 1, "in_flight": 0, "latency": {"buckets": [0.1], "counts": [1, 2],
                                                "sum": float("nan")}},
    {"requests": 1, "in_flight": 0, "replace": "made-up-limit-%d: x" % time.time_ns()},
]
GARBAGE = [
    b"not json at all", b"[1, 2, 3]", b"42", b'"text"', b"null", b"\\xff\\xfe{",
    b"[" * 200000, b'{"a":' * 100 + b"1" + b"}" * 100,
    b'{"reply": [1], "result": {}}', b'{"reply": "1"}', b'{"reply": 1e400}',
    b'{"event": 5}', b'{"event": "exited", "pid": "x"}', b'{"event": "exited", "pid": 1}',
    b'{"event": "boot_error", "error": ["x"]}', b'{"event": "ready", "pid": 1}',
] + [b'{"event": "exited", "pid": %d, "returncode": 0}' % pid for pid in range(2, 5000)]


def find(kind):
    for obj in gc.get_objects():
        if isinstance(obj, kind) and (kind is not Channel or obj.sock.fileno() >= 0):
            return obj


def application(environ, start_response):
    path = environ["PATH_INFO"]
    worker = find(Worker)
    if path == "/channel-garbage":
        sock = find(Channel).sock
        sock.sendall(b"\\n".join(GARBAGE) + b"\\n")
        sock.sendall(b"x" * (6 << 20) + b"\\n")       # longer than the channel's limit
    elif path == "/output-garbage":
        sys.stdout.write("y" * (32 << 20) + "\\n")    # one 32 MiB line
        sys.stdout.flush()
    elif path == "/bad-stats":
        answers = iter(BAD_STATS * 100)
        worker.call_stats = lambda: next(answers)
    elif path == "/good-stats":
        worker.__dict__.pop("call_stats", None)
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def worker_row(server) -> dict:
    [app] = server.status()["apps"]
    [row] = app["workers"]
    return row


def test_garbage_from_a_worker_is_dropped_and_the_master_reads_on(railcar, tmp_path):
    port = free_port()
    server = railcar().start(str(write_app(tmp_path / "app", HOSTILE_APP)), "--workers", "1",
                             "--metrics-bind", f"127.0.0.1:{port}")
    pid = int(server.get("/").text)
    master = server.proc.pid
    before = peak_rss(master)
    assert server.get("/channel-garbage").text == str(pid)
    assert server.get("/output-garbage").text == str(pid)
    # The reader goes on: the worker's next stats (its counters) reach the status.
    row = wait_for(lambda: (r := worker_row(server))["requests"] is not None
                   and r["requests"] >= 3 and r, 30, what="counters after the garbage")
    assert row["pid"] == pid and row["state"] == "ready"
    grown = peak_rss(master) - before
    assert grown < 24 << 20, f"the master's peak RSS grew by {grown >> 20} MiB"
    log = server.log()
    assert "dropped a malformed message from worker" in log
    assert "more bytes of this line dropped]" in log
    assert server.log_file.stat().st_size < 1 << 20
    assert server.get("/").text == str(pid)
    server.stop()


def test_bad_stats_are_dropped_without_breaking_status_or_metrics(railcar, tmp_path):
    port = free_port()
    server = railcar().start(str(write_app(tmp_path / "app", HOSTILE_APP)), "--workers", "1",
                             "--metrics-bind", f"127.0.0.1:{port}", "--max-requests", "1000")
    pid = int(server.get("/bad-stats").text)
    for _ in range(4):      # every kind of bad stats, through the supervisor and status
        row = worker_row(server)
        assert row["pid"] == pid and row["requests"] is None
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        assert metrics.status_code == 200 and "railcar_workers" in metrics.text
        time.sleep(0.6)
    assert server.get("/good-stats").text == str(pid)
    wait_for(lambda: worker_row(server)["requests"] is not None, 30, what="good stats")
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert "class-" not in text and "made-up-limit" not in text
    [app] = server.status()["apps"]
    assert app["replacements"] == {} and worker_row(server)["pid"] == pid
    assert "dropped a malformed message from worker" in server.log()
    assert server.get("/").text == str(pid)
    server.stop()


# Stands in for the app's interpreter: everything runs as usual, except that the preloader
# answers its first fork with the pid of a process that is not its child (and garbage).
LYING_PYTHON = '''#!{python}
import os, sys
if sys.argv[1:] != ["-m", "railcar.preloader"]:
    os.execv({python!r}, [{python!r}] + sys.argv[1:])
from railcar import preloader
real_fork = preloader.Preloader.fork
forks = []

def fork(self, message):
    forks.append(message)
    if len(forks) > 1:
        return real_fork(self, message)
    for fd in self.channel.take_fds(message.get("fds", 0)):
        os.close(fd)
    self.channel.send({{"event": "exited", "pid": {victim}, "returncode": 0}})
    self.channel.sock.sendall(b"[1]\\n" + b"{{" * 100000 + b"\\n")
    return {{"pid": {victim}}}

preloader.Preloader.fork = fork
preloader.main()
'''

BYSTANDER = '''
import signal, sys, time
def record(number, frame):
    with open(sys.argv[1], "a") as handle:
        handle.write(f"{number}\\n")
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1,
            signal.SIGUSR2):
    signal.signal(sig, record)
time.sleep(120)
'''


def test_a_pid_a_preloader_lies_about_is_never_signalled(railcar, tmp_path):
    signals = tmp_path / "signals"
    victim = subprocess.Popen([sys.executable, "-c", BYSTANDER, str(signals)])
    try:
        fake = tmp_path / "python"
        fake.write_text(LYING_PYTHON.format(python=sys.executable, victim=victim.pid))
        fake.chmod(0o755)
        server = railcar().start(str(write_app(tmp_path / "app", APP)), "--workers", "1",
                                 "--python", str(fake), "--boot-timeout", "3")
        log = server.log()
        assert f"reported pid {victim.pid}, which is not its child" in log
        assert "dropped a malformed message from preloader" in log
        pid = int(server.get("/").text)
        assert pid != victim.pid and worker_row(server)["pid"] == pid
        server.stop()
        assert victim.poll() is None and not signals.exists()
    finally:
        victim.kill()
        victim.wait()


def test_channel_drops_bad_lines_and_reads_on():
    import socket

    from railcar.channel import Channel

    ours, theirs = socket.socketpair()
    channel = Channel(ours, max_line=64 * 1024)
    bad = []
    lines = [b"nonsense", b"[1]", b"[" * 50000, b'{"a":' * 20 + b"1" + b"}" * 20,
             b"x" * 500000, b'{"event": "ready"}']
    def send():
        theirs.sendall(b"\n".join(lines) + b"\n")
        theirs.close()

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert list(channel.messages(on_bad=bad.append)) == [{"event": "ready"}]
    sender.join(timeout=10)
    assert [str(e).split(" ")[0] for e in bad] == ["not", "not", "not", "nested", "a"]
    assert "500000 bytes, over the limit of 65536" in str(bad[-1])
    channel.close()
