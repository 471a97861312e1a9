"""Trace every request of a load during `railcar restart`, with the restart's own events on
the same clock.

    python bench/trace_restart.py [--rounds 3] [--seconds 8] [--restart-at 2] [--workers 2]
                                  [--connections 50] [--perf] [--keep DIR]
                                  [--variant NAME[@RAILCAR]=ARGS ...]

railcar serves bench/apps/hellopid (examples/hello plus an `X-Worker: PID` header) with
`--workers`. Rounds alternate: a control load (no restart), then a load with `railcar
restart` `--restart-at` seconds into it. With `--variant`, each round is run again with
another railcar program and/or other `railcar start` arguments, alternating. The load is
bench/trace_load.c, compiled here with `cc`: `--connections` keep-alive connections to
127.0.0.1, closed loop like wrk, recording each request's send time (CLOCK_MONOTONIC, the
clock of time.monotonic()), latency and the worker that answered it.

During a restart load this process also records, on the same clock: the master's and each
preloader's children appearing and vanishing (/proc/PID/task/PID/children, every 2 ms), each
line of the master's log as it is written, and `railcar restart`'s start and end. With
`--perf`, `perf sched record -k CLOCK_MONOTONIC` runs from 1 s before the restart to 1 s
after it (root, or perf_event_paranoid <= 0), and the report adds the CPU ms per 10 ms slot
of the busiest processes, the workers' waits for a CPU longer than `--delay-ms` with what
ran on that CPU meanwhile, and how long the workers waited for a CPU during the restart in
all, split by what held that CPU: the restart's own processes, the workers, the load, others.

Reported per round: worst request, requests over the paired control's worst; for a restart
round, the timeline of events and the slowest requests with the worker that served them (old
or new), their send time relative to the restart, and whether it was a connection's first
request. Every load is bounded (`--seconds`, at most 60; 5,000,000 records).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import servers

BENCH_DIR = Path(__file__).resolve().parent
APP_DIR = BENCH_DIR / "apps" / "hellopid"
SOURCE = BENCH_DIR / "trace_load.c"
MAX_RECORDS = 5_000_000
POLL = 0.002   # the watcher's period: finer costs the measured CPUs more


def build(tmp: Path) -> Path:
    binary = tmp / "trace_load"
    subprocess.run(["cc", "-O2", "-Wall", "-o", str(binary), str(SOURCE)], check=True)
    return binary


class Request:
    __slots__ = ("start", "latency", "conn", "pid", "flags")

    def __init__(self, start, latency, conn, pid, flags):
        self.start, self.latency, self.conn, self.pid, self.flags = \
            start, latency, conn, pid, flags


def load(binary: Path, port: int, connections: int, seconds: float, out: Path) \
        -> subprocess.Popen:
    return subprocess.Popen([str(binary), str(port), str(connections), str(seconds),
                             str(MAX_RECORDS), str(out)])


def read_trace(path: Path) -> tuple[list[Request], str]:
    requests, summary = [], ""
    with open(path) as f:
        for line in f:
            if line.startswith("#"):
                summary = line[1:].strip()
                continue
            s, lat, c, pid, flags = line.split()
            requests.append(Request(int(s) / 1e9, int(lat) / 1e9, int(c), int(pid),
                                    int(flags)))
    return requests, summary


class Watcher:
    """The master's process tree and log, stamped with time.monotonic() every POLL s."""

    def __init__(self, master: int, log_path: Path):
        self.master = master
        self.log_path = log_path
        self.events: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.known: dict[int, int] = {}     # pid -> parent
        self.offset = log_path.stat().st_size if log_path.exists() else 0
        self.initial = self.tree()
        self.known = dict(self.initial)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def children(self, pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return [int(p) for p in f.read().split()]
        except OSError:
            return []

    def tree(self) -> dict[int, int]:
        found, todo = {}, [self.master]
        while todo:
            parent = todo.pop()
            for child in self.children(parent):
                found[child] = parent
                todo.append(child)
        return found

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.monotonic()
            tree = self.tree()
            for pid, parent in tree.items():
                if pid not in self.known:
                    self.events.append((now, f"process {pid} appears (parent {parent})"))
            for pid in self.known:
                if pid not in tree:
                    self.events.append((now, f"process {pid} gone"))
            self.known = tree
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(self.offset)
                    data = f.read()
                    if data:
                        cut = data.rfind(b"\n") + 1
                        self.offset += cut
                        for line in data[:cut].decode(errors="replace").splitlines():
                            self.events.append((now, "log: " + line.split("] ", 3)[-1]))
            except OSError:
                pass
            time.sleep(POLL)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


TIMEHIST = re.compile(r"^\s*([\d.]+)\s+\[(\d+)\]\s+(.*?\[(\d+)(?:/(\d+))?\])\s+"
                      r"([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+(\S+)")


def perf_runs(data: Path) -> list[tuple[float, int, str, float, float, int]]:
    """(end of the run in s, cpu, task, how long it waited for a CPU before it in ms, its run
    time ms, its pid) of every run `perf sched timehist` shows (recorded with -k
    CLOCK_MONOTONIC: time.monotonic()). The wait for a CPU is the scheduling delay after a
    wake-up, or, for a task preempted while runnable (state R), the whole time off the CPU."""
    out = subprocess.run(["perf", "sched", "timehist", "--state", "-i", str(data)],
                         capture_output=True, text=True).stdout
    runs, last_state = [], {}
    for line in out.splitlines():
        match = TIMEHIST.match(line)
        if match:
            end, cpu, task, tid, pid, wait, delay, run, state = match.groups()
            tid = int(tid)
            waited = float(wait) if last_state.get(tid) == "R" else float(delay)
            last_state[tid] = state
            runs.append((float(end), int(cpu), task.strip(), waited, float(run),
                         int(pid or tid)))
    return runs


def perf_cpu(runs, t0: float, slot: float = 0.01) -> dict[str, dict[int, float]]:
    """{task: {slot index from t0: ms on a CPU}}."""
    usage: dict[str, dict[int, float]] = collections.defaultdict(
        lambda: collections.defaultdict(float))
    for end, _cpu, task, _delay, run_ms, _pid in runs:
        start = end - run_ms / 1000
        for index in range(int((start - t0) // slot), int((end - t0) // slot) + 1):
            piece = min(end, t0 + (index + 1) * slot) - max(start, t0 + index * slot)
            if piece > 0:
                usage[task][index] += piece * 1000
    return usage


def describe(role: dict[int, str], pid: int) -> str:
    return f"{role.get(pid, '?')}:{pid}" if pid else "-"


def report_restart(requests, events, t_restart, t_done, control_worst, old, perf_usage,
                   slowest):
    """Print the restart round's timeline and its slowest requests."""
    print(f"  timeline (ms from `railcar restart`; it returned at "
          f"{(t_done - t_restart) * 1000:.0f}):")
    for t, text in events:
        print(f"    {(t - t_restart) * 1000:8.1f}  {text}")
    role = {pid: "old" for pid in old}
    for r in requests:
        if r.pid and r.pid not in role:
            role[r.pid] = "new"
    print(f"  slowest {slowest} requests (sent at ms from the restart, latency, worker, "
          "first on its connection):")
    for r in sorted(requests, key=lambda r: -r.latency)[:slowest]:
        print(f"    {(r.start - t_restart) * 1000:8.1f}  {r.latency * 1000:6.1f} ms  "
              f"{describe(role, r.pid):>12}  conn {r.conn:3d}"
              f"{'  first' if r.flags & 1 else ''}{'  close' if r.flags & 2 else ''}"
              f"{'  FAILED' if r.flags & 4 else ''}")
    over = [r for r in requests if r.latency > control_worst]
    by_role = collections.Counter(role.get(r.pid, "?") for r in over)
    firsts = sum(1 for r in over if r.flags & 1)
    print(f"  over the control's worst ({control_worst * 1000:.1f} ms): {len(over)}: "
          f"{dict(by_role)}, {firsts} first on their connection")
    # 50 ms slots: requests sent, their worst latency, the count over the control's worst.
    slots = collections.defaultdict(list)
    for r in requests:
        slots[int((r.start - t_restart) // 0.05)].append(r)
    print("  per 50 ms slot from the restart: sent, worst ms, over control, by worker")
    for index in sorted(slots):
        rs = slots[index]
        worst = max(r.latency for r in rs)
        n_over = sum(1 for r in rs if r.latency > control_worst)
        if index < -2 or (n_over == 0 and worst < control_worst * 0.8 and index > 1
                          and (index * 0.05) > (t_done - t_restart) + 0.5):
            continue
        workers = collections.Counter(describe(role, r.pid) for r in rs)
        line = f"    {index * 50:6d}  {len(rs):5d}  {worst * 1000:6.1f}  {n_over:4d}  " + \
            " ".join(f"{w}={n}" for w, n in sorted(workers.items()))
        print(line)
    if perf_usage:
        print("  CPU ms per 10 ms slot (perf sched), busiest processes, from -20 ms:")
        names = sorted(perf_usage, key=lambda n: -sum(perf_usage[n].values()))[:12]
        last = int((t_done - t_restart) / 0.01) + 20
        print("    slot  " + " ".join(f"{n[-18:]:>18}" for n in names))
        for index in range(-2, last):
            cells = [perf_usage[n].get(index, 0.0) for n in names]
            if sum(cells) == 0:
                continue
            print(f"    {index * 10:5d} " + " ".join(f"{c:18.1f}" for c in cells))


def report_delays(runs, t_restart, t_done, delay_ms):
    """Every wait of a serving process (a `railcar: worker`) for a CPU longer than
    `delay_ms`, and what ran on the CPUs meanwhile."""
    print(f"  workers' waits for a CPU over {delay_ms:g} ms (perf sched), and who ran then:")
    by_ms = collections.defaultdict(list)    # runs by the ms they ended in (none is > 100 ms)
    for end, _cpu, task, _delay, run_ms, pid in runs:
        by_ms[int(end * 1000)].append((end, end - run_ms / 1000, task, pid))
    for end, cpu, task, delay, run_ms, pid in runs:
        if delay <= delay_ms or "worker" not in task:
            continue
        if end < t_restart - 0.3 or end > t_done + 1:
            continue
        ready = end - run_ms / 1000 - delay / 1000
        start = end - run_ms / 1000
        busy = collections.Counter()
        for bucket in range(int(ready * 1000), int(start * 1000) + 101):
            for e2, s2, t2, _p2 in by_ms.get(bucket, ()):
                overlap = min(e2, start) - max(s2, ready)
                if overlap > 0:
                    busy[t2] += overlap * 1000
        top = ", ".join(f"{t[-28:]} {ms:.1f}" for t, ms in busy.most_common(4))
        print(f"    {(ready - t_restart) * 1000:8.1f}  {task[-30:]:>30} waited {delay:5.1f} ms"
              f" on cpu {cpu}: {top}")


def report_blame(runs, t_restart, t_done, master, cli, old, events) -> dict:
    """From the restart's start to 0.2 s after its end: how long this server's workers (`old`
    and the new ones) waited for a CPU in all, and what ran on that CPU meanwhile, by kind:
    the restart's own processes (`railcar restart` = `cli`, the master, the processes it
    started: preloader, checks), the workers, the load generator, anything else."""
    started = {int(text.split()[1]) for _t, text in events
               if text.startswith("process ") and f"(parent {master})" in text}
    serving = set(old) | {int(text.split()[1]) for _t, text in events
                          if text.startswith("process ") and "appears" in text
                          and int(text.split("parent ")[1].rstrip(")")) in started}
    window = (t_restart, t_done + 0.2)
    by_ms = collections.defaultdict(list)    # (cpu, the ms a run ended in): runs
    for end, cpu, task, _w, run_ms, pid in runs:
        if end >= window[0] - 0.2 and end - run_ms / 1000 <= window[1]:
            by_ms[cpu, int(end * 1000)].append((end - run_ms / 1000, end, task, pid))

    def kind(task, pid):
        if pid in (cli, master) or pid in started:
            return "restart"
        if pid in serving:
            return "workers"
        if task.startswith("trace_load"):
            return "load"
        return "other"

    totals = collections.Counter()
    for end, cpu, task, waited, run_ms, pid in runs:
        if pid not in serving or waited <= 0:
            continue
        ready, start = end - run_ms / 1000 - waited / 1000, end - run_ms / 1000
        if start < window[0] or ready > window[1]:
            continue
        totals["waited"] += waited
        for bucket in range(int(ready * 1000), int(start * 1000) + 101):
            for s2, e2, t2, p2 in by_ms.get((cpu, bucket), ()):
                overlap = min(e2, start) - max(s2, ready)
                if overlap > 0 and p2 != pid:
                    totals[kind(t2, p2)] += overlap * 1000
    print("  this server's workers waited for a CPU " + f"{totals['waited']:.1f} ms in all; "
          "on that CPU meanwhile: " + ", ".join(f"{k} {totals[k]:.1f} ms" for k in
                                                 ("restart", "workers", "load", "other")))
    return dict(totals)


def one_round(args, tmp: Path, binary: Path, name: str, executable: str, extra: list[str],
              round_no: int, controls: list, diffs: list, blame: list) -> None:
    """Start railcar (`executable`, `extra` arguments to `railcar start`), warm it, run a
    control load and a restart load, report, stop it."""
    base = servers.KINDS["railcar"]
    kind = dataclasses.replace(base, argv=lambda launch: base.argv(launch) + extra)
    tag = f"{name}-{round_no}"
    with servers.RunningServer(kind, executable, APP_DIR, args.workers, 1, 30) as running:
        warm = tmp / "warm.txt"
        load(binary, running.port, args.connections, 2, warm).wait()
        out = tmp / f"control-{tag}.txt"
        load(binary, running.port, args.connections, args.seconds, out).wait()
        requests, summary = read_trace(out)
        control_worst = max(r.latency for r in requests)
        controls.append(control_worst)
        print(f"round {round_no + 1} control: {len(requests)} requests, worst "
              f"{control_worst * 1000:.1f} ms ({summary})")
        out = tmp / f"restart-{tag}.txt"
        log_path = running.tmp / "railcar.log"
        watcher = Watcher(running.process.pid, log_path)
        old = {pid for pid, parent in watcher.initial.items()
               if parent != running.process.pid}
        perf = perf_data = None
        with watcher:
            loader = load(binary, running.port, args.connections, args.seconds, out)
            if args.perf:   # from 1 s before the restart to 1 s after its end
                time.sleep(max(args.restart_at - 1, 0))
                perf_data = tmp / f"perf-{tag}.data"
                perf = subprocess.Popen(
                    ["perf", "sched", "record", "-k", "CLOCK_MONOTONIC", "-o",
                     str(perf_data)], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
                time.sleep(min(1, args.restart_at))
            else:
                time.sleep(args.restart_at)
            t_restart = time.monotonic()
            cli = subprocess.Popen([executable, "restart", "--admin-socket",
                                    str(running.tmp / "admin.sock")], text=True,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
            try:
                output = cli.communicate(timeout=args.seconds - args.restart_at)[0]
            except subprocess.TimeoutExpired:
                cli.kill()
                output = cli.communicate()[0] + " (did not return in time)"
            t_done = time.monotonic()
            restart_ok = cli.returncode == 0
            if perf is not None:
                time.sleep(1)
                perf.send_signal(signal.SIGINT)
                perf.wait()
            loader.wait()
        requests, summary = read_trace(out)
        worst = max(r.latency for r in requests)
        diffs.append(worst - control_worst)
        failed = sum(1 for r in requests if r.flags & 4)
        print(f"round {round_no + 1} restart: {len(requests)} requests, worst "
              f"{worst * 1000:.1f} ms ({(worst - control_worst) * 1000:+.1f}), "
              f"failed {failed}, restart {'ok' if restart_ok else 'FAILED: ' + output} in "
              f"{t_done - t_restart:.2f} s ({summary})")
        runs = perf_runs(perf_data) if perf is not None else []
        with open(tmp / f"restart-{tag}.json", "w") as f:
            json.dump({"t_restart": t_restart, "t_done": t_done, "old": sorted(old),
                       "master": running.process.pid, "cli": cli.pid,
                       "control_worst": control_worst, "events": watcher.events}, f)
        report_restart(requests, watcher.events, t_restart, t_done, control_worst,
                       old, perf_cpu(runs, t_restart) if runs else None, args.slowest)
        if runs:
            report_delays(runs, t_restart, t_done, args.delay_ms)
            blame.append(report_blame(runs, t_restart, t_done, running.process.pid, cli.pid,
                                      old, watcher.events))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--restart-at", type=float, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--perf", action="store_true")
    parser.add_argument("--slowest", type=int, default=25)
    parser.add_argument("--delay-ms", type=float, default=4.0,
                        help="--perf: list the workers' waits for a CPU longer than this")
    parser.add_argument("--variant", action="append", default=[],
                        metavar="NAME[@RAILCAR]=ARGS",
                        help="also run railcar (the program RAILCAR, e.g. another checkout's "
                        "venv/bin/railcar) with these `railcar start` arguments, its rounds "
                        "alternating with the default's (repeatable)")
    parser.add_argument("--keep", help="keep the traces in this directory")
    args = parser.parse_args()
    servers.exit_on_sigterm()
    if not 0 < args.seconds <= 60 or not 0 < args.restart_at < args.seconds:
        parser.error("--seconds must be in (0, 60] and --restart-at inside it")
    tmp = Path(args.keep or tempfile.mkdtemp(prefix="trace-restart-"))
    tmp.mkdir(parents=True, exist_ok=True)
    binary = build(tmp)
    mine = servers.find_program("railcar", Path(sys.executable).parent)
    variants = [("railcar", mine, [])]
    for text in args.variant:
        name, _, extra = text.partition("=")
        name, _, program = name.partition("@")
        variants.append((name, program or mine, shlex.split(extra)))
    results = {name: ([], [], []) for name, _, _ in variants}
    try:
        for round_no in range(args.rounds):
            for name, program, extra in variants:
                print(f"== round {round_no + 1} {name}: {program} {' '.join(extra)}")
                one_round(args, tmp, binary, name, program, extra, round_no, *results[name])
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    for name, (controls, diffs, blame) in results.items():
        if diffs:
            over = [d for d in diffs]
            print(f"{name}: control worst median {statistics.median(controls) * 1000:.1f} ms "
                  f"({min(controls) * 1000:.1f}..{max(controls) * 1000:.1f}); restart minus "
                  f"control median {statistics.median(over) * 1000:+.1f} ms "
                  f"({min(over) * 1000:+.1f}..{max(over) * 1000:+.1f})")
        if blame:
            for key in ("waited", "restart", "workers", "load", "other"):
                values = [b.get(key, 0.0) for b in blame]
                print(f"  workers' waits for a CPU during the restart, {key}: median "
                      f"{statistics.median(values):.1f} ms ({min(values):.1f}.."
                      f"{max(values):.1f})")

if __name__ == "__main__":
    main()
