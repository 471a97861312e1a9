"""USS per worker with and without gc_freeze, for the Flask example and a small Django project.

    python bench/gc_freeze.py [--apps flask,django] [--rounds 3] [--workers 4] [--requests 200]

Smart spawning forks the workers from a preloader that imported the app; a page stays shared
until a worker writes to it, and the cyclic garbage collector writes to every object it
examines. With gc_freeze (railcar's default) the preloader moves what the import made to the
collector's permanent generation before forking. For each app, rounds alternate between
`--gc-freeze` and `--no-gc-freeze`; each round starts railcar fresh (its own port, admin socket
and temp dir), sends `--requests` requests over new connections (so every worker serves some),
reads each worker's USS (psutil's memory_full_info().uss: the pages no other process shares),
then has every worker run one full collection (gc.collect(), as a long-running worker
eventually does by itself) and reads USS again, then stops railcar. It prints the medians over
all workers of all rounds. Needs the bench extra (Flask, Django): pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
APPS = {"flask": (REPO_DIR / "examples" / "flaskapp", "/"),
        "django": (BENCH_DIR / "apps" / "djangosmall", "/")}
RAILCAR = Path(sys.executable).parent / "railcar"
BOOT_TIMEOUT = 60.0
MiB = 1024 * 1024

# Wraps the app: GET /__bench_collect runs one full collection in the worker that answers it
# and returns its pid; everything else goes to the app.
WRAPPER = '''
import gc, os
from wsgi import application as app

def application(environ, start_response):
    if environ["PATH_INFO"] == "/__bench_collect":
        gc.collect()
        body = str(os.getpid()).encode()
        start_response("200 OK", [("Content-Type", "text/plain"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    return app(environ, start_response)
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes]:
    """One request on a new connection (so the kernel spreads them over the workers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Connection": "close"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def worker_pids(admin: str) -> list[int]:
    result = subprocess.run([str(RAILCAR), "status", "--json", "--admin-socket", admin],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        return []
    return [w["pid"] for app in json.loads(result.stdout)["apps"] for w in app["workers"]
            if w["state"] == "ready"]


def uss(pids: list[int]) -> list[int]:
    return [psutil.Process(pid).memory_full_info().uss for pid in pids]


def one_round(app: str, freeze: bool, workers: int, requests: int) -> dict:
    source, path = APPS[app]
    workdir = Path(tempfile.mkdtemp(prefix="railcar-gcbench-"))
    release = workdir / "app"
    shutil.copytree(source, release, ignore=shutil.ignore_patterns("__pycache__"))
    (release / "bench_wsgi.py").write_text(WRAPPER)
    port, admin = free_port(), str(workdir / "admin.sock")
    argv = [str(RAILCAR), "start", str(release), "--app", "bench_wsgi:application",
            "--port", str(port), "--workers", str(workers), "--admin-socket", admin,
            "--log-file", str(workdir / "railcar.log"),
            "--gc-freeze" if freeze else "--no-gc-freeze"]
    if psutil.Process().uids().real == 0:
        argv.append("--allow-root")      # the bench's own temp dirs are root's
    output = open(workdir / "output.log", "wb")
    master = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while len(worker_pids(admin)) < workers:
            if time.monotonic() > deadline or master.poll() is not None:
                logs = [workdir / "output.log", workdir / "railcar.log"]
                text = "".join(p.read_text(errors="replace") for p in logs if p.exists())
                raise RuntimeError(f"railcar did not boot {app}: {text[-2000:]}")
            time.sleep(0.2)
        pids = worker_pids(admin)
        for _ in range(requests):
            status, _ = get(port, path)
            if status != 200:
                raise RuntimeError(f"{app}: GET {path} answered {status}")
        time.sleep(0.5)
        served = uss(pids)
        collected: set[int] = set()
        for _ in range(50 * workers):       # until every worker ran its collection
            collected.add(int(get(port, "/__bench_collect")[1]))
            if collected >= set(pids):
                break
        time.sleep(0.5)
        after_gc = uss(pids)
        return {"app": app, "gc_freeze": freeze, "pids": pids, "uss_served": served,
                "uss_after_gc": after_gc, "collected": sorted(collected & set(pids))}
    finally:
        master.terminate()
        try:
            master.wait(timeout=60)
        except subprocess.TimeoutExpired:
            master.kill()
            master.wait()
        output.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--apps", default="flask,django")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--json", help="write every round's numbers here")
    args = parser.parse_args()
    rounds = []
    for app in args.apps.split(","):
        for number in range(args.rounds):
            for freeze in (True, False):
                result = one_round(app, freeze, args.workers, args.requests)
                rounds.append(result)
                print(f"{app:7} round {number + 1} gc_freeze={'on ' if freeze else 'off'} "
                      f"USS MiB served: {' '.join(f'{u / MiB:.1f}' for u in result['uss_served'])}"
                      f"  after gc: {' '.join(f'{u / MiB:.1f}' for u in result['uss_after_gc'])}",
                      flush=True)
    print(f"\nmedian USS per worker (MiB), {args.workers} workers x {args.rounds} rounds, "
          f"{args.requests} requests per round")
    print(f"{'app':8}{'gc_freeze':>10}{'served':>10}{'after gc':>10}")
    for app in args.apps.split(","):
        for freeze in (True, False):
            mine = [r for r in rounds if r["app"] == app and r["gc_freeze"] == freeze]
            served = statistics.median(u for r in mine for u in r["uss_served"]) / MiB
            after = statistics.median(u for r in mine for u in r["uss_after_gc"]) / MiB
            print(f"{app:8}{'on' if freeze else 'off':>10}{served:>10.1f}{after:>10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
