"""Benchmark railcar against its peers, side by side in one run.

    python bench/run.py [--peers gunicorn-gevent,...] [--apps hello,io20] [--rounds 3]
                        [--connections 64] [--duration 8] [--workers 2] [--json FILE]

For each app, rounds alternate between the servers (railcar, gunicorn-gevent, railcar,
gunicorn-gevent, ...). Each round starts the server fresh on a new loopback port, waits until
it answers GET / with 200, warms it up with an unrecorded wrk run, loads it with
`wrk -t2 -c64 -d8s --latency`, then stops it, so only one server runs at a time. The report
gives, per app and server, the medians over rounds of req/s, p50 and p99, the errors, and
railcar's ratios to each peer. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import servers
import wrk

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
APPS = {
    "hello": REPO_DIR / "examples" / "hello",
    "io20": BENCH_DIR / "apps" / "io20",
    "flask": REPO_DIR / "examples" / "flaskapp",
}
DEFAULT_APPS = ["hello", "io20"]
IO20_DELAY = 0.02
DEFAULT_PEERS = ["gunicorn-gevent"]
BASELINE = "gunicorn-gevent"


@dataclass
class Round:
    app: str
    server: str
    number: int
    port: int | None = None
    result: wrk.WrkResult | None = None
    raw: str = ""
    failure: str = ""            # why there is no result (start failure, wrk failure)

    @property
    def ok(self) -> bool:
        return self.result is not None and self.result.errors == 0

    def to_dict(self) -> dict:
        return {"app": self.app, "server": self.server, "round": self.number,
                "port": self.port, "failure": self.failure or None,
                "result": self.result.to_dict() if self.result else None, "wrk_output": self.raw}


@dataclass
class Summary:
    """The medians of one server's rounds on one app."""
    server: str
    rounds: list[Round] = field(default_factory=list)

    def _values(self, attribute: str) -> list[float]:
        values = [getattr(r.result, attribute) for r in self.rounds if r.result]
        return [v for v in values if v is not None]

    def median(self, attribute: str) -> float | None:
        values = self._values(attribute)
        return statistics.median(values) if values else None

    def spread(self) -> tuple[float, float] | None:
        values = self._values("requests_per_sec")
        return (min(values), max(values)) if values else None

    @property
    def errors(self) -> int:
        return sum(r.result.errors for r in self.rounds if r.result)

    @property
    def failures(self) -> list[str]:
        return [r.failure for r in self.rounds if r.failure]


# ---------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark railcar against peer WSGI servers under wrk, side by side.")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                        help="comma-separated peers to compare with, or 'all': "
                             + ", ".join(k for k in servers.KINDS if k != "railcar")
                             + " (default: %(default)s); missing ones are skipped")
    parser.add_argument("--no-railcar", action="store_true",
                        help="run the peers only (e.g. to check the setup)")
    parser.add_argument("--apps", default=",".join(DEFAULT_APPS),
                        help="comma-separated apps: " + ", ".join(APPS) + " (default: "
                        + ",".join(DEFAULT_APPS) + ")")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server and app "
                        "(default: %(default)s)")
    parser.add_argument("--duration", type=float, default=8, help="seconds of load per round "
                        "(default: %(default)s)")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of unrecorded load "
                        "before each round, 0 for none (default: %(default)s)")
    parser.add_argument("--connections", type=int, default=64, help="wrk -c "
                        "(default: %(default)s)")
    parser.add_argument("--wrk-threads", type=int, default=2, help="wrk -t "
                        "(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of every "
                        "server (default: %(default)s)")
    parser.add_argument("--peer-threads", type=int, default=32, help="threads per worker of "
                        "thread-based peers: gunicorn-gthread, waitress (default: %(default)s)")
    parser.add_argument("--boot-timeout", type=float, default=30, help="seconds a server may "
                        "take to answer its first GET (default: %(default)s)")
    parser.add_argument("--bin-dir", type=Path, default=Path(sys.executable).parent,
                        help="where to find railcar, gunicorn, ... before PATH "
                             "(default: this Python's bin/, %(default)s)")
    parser.add_argument("--json", type=Path, metavar="FILE",
                        help="write the settings and every raw round to FILE")
    args = parser.parse_args(argv)
    args.apps = _names(args.apps, APPS, parser, "app")
    peers = [k for k in servers.KINDS if k != "railcar"] if args.peers == "all" else args.peers
    args.peers = _names(peers, servers.KINDS, parser, "peer")
    for name in ("rounds", "connections", "wrk_threads", "workers", "peer_threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    if args.connections < args.wrk_threads:
        parser.error("--connections must be at least --wrk-threads")
    return args


def _names(value, known: dict, parser: argparse.ArgumentParser, what: str) -> list[str]:
    names = value if isinstance(value, list) else [n.strip() for n in value.split(",")]
    names = [n for n in dict.fromkeys(names) if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown {what}(s): {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def resolve_servers(args: argparse.Namespace) -> tuple[dict[str, str], list[str]]:
    """The servers to run ({name: executable}, railcar first) and notes on the skipped ones."""
    wanted = ([] if args.no_railcar else ["railcar"]) + [p for p in args.peers if p != "railcar"]
    found, notes = {}, []
    for name in wanted:
        kind = servers.KINDS[name]
        executable = servers.find_program(kind.program, args.bin_dir)
        if executable:
            found[name] = executable
        else:
            notes.append(f"skipped {name}: '{kind.program}' not installed ({kind.install})")
    return found, notes


# ---------------------------------------------------------------------------- running

def run_round(app: str, server: str, executable: str, number: int,
              args: argparse.Namespace) -> Round:
    """Start SERVER on APP, warm up, load it once, stop it."""
    round_ = Round(app=app, server=server, number=number)
    kind = servers.KINDS[server]
    try:
        with servers.RunningServer(kind, executable, APPS[app], args.workers,
                                   args.peer_threads, args.boot_timeout) as running:
            round_.port = running.port
            url = f"http://127.0.0.1:{running.port}/"
            if args.warmup:
                wrk.run(args.wrk, url, args.wrk_threads, args.connections, args.warmup)
            round_.result, round_.raw = wrk.run(args.wrk, url, args.wrk_threads,
                                                args.connections, args.duration)
            if running.process.poll() is not None:
                round_.failure = (f"{server} exited (status {running.process.returncode}) "
                                  "during the load")
    except (servers.ServerError, wrk.WrkError) as exc:
        round_.failure = str(exc)
    return round_


def describe_round(round_: Round) -> str:
    head = f"  {round_.app:<6} round {round_.number}  {round_.server:<17}"
    if round_.result is None:
        return f"{head} FAILED: {round_.failure.splitlines()[0]}"
    r = round_.result
    text = (f"{head} {r.requests_per_sec:>10,.0f} req/s  p50 {fmt_ms(r.p50_ms):>9}"
            f"  p99 {fmt_ms(r.p99_ms):>9}")
    if r.errors:
        text += f"  ERRORS: {r.error_summary()}"
    if round_.failure:
        text += f"  ({round_.failure})"
    return text


def run_all(args: argparse.Namespace, found: dict[str, str]) -> list[Round]:
    rounds = []
    for app in args.apps:
        for number in range(1, args.rounds + 1):
            for server, executable in found.items():
                round_ = run_round(app, server, executable, number, args)
                rounds.append(round_)
                print(describe_round(round_), flush=True)
                if round_.result is None and round_.failure:
                    for line in round_.failure.splitlines()[1:]:
                        print(line, flush=True)
    return rounds


# ---------------------------------------------------------------------------- report

def fmt_ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    return f"{value:.1f} ms" if value >= 1 else f"{value:.2f} ms"


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


def summarize(rounds: list[Round], app: str, names: list[str]) -> list[Summary]:
    summaries = []
    for name in names:
        summaries.append(Summary(name, [r for r in rounds if r.app == app and r.server == name]))
    return summaries


def errors_text(summary: Summary) -> str:
    parts = []
    if summary.errors:
        kinds: dict[str, int] = {}
        for round_ in summary.rounds:
            if round_.result:
                for kind, count in round_.result.socket_errors.items():
                    kinds[kind] = kinds.get(kind, 0) + count
                kinds["non-2xx/3xx"] = kinds.get("non-2xx/3xx", 0) + round_.result.non_2xx_3xx
        parts.append("ERRORS " + ", ".join(f"{k} {v}" for k, v in kinds.items() if v))
    if summary.failures:
        parts.append(f"{len(summary.failures)} round(s) FAILED")
    return "; ".join(parts) or "0"


def report_app(app: str, summaries: list[Summary], args: argparse.Namespace) -> list[str]:
    title = f"{app}: median of {args.rounds} round{'s' if args.rounds > 1 else ''}"
    if app == "io20":
        ceiling = args.connections / IO20_DELAY
        title += f" (20 ms per request; ceiling {args.connections} / 0.02 s = {ceiling:,.0f} req/s)"
    lines = [title,
             f"  {'server':<17} {'req/s':>9} {'(min-max)':>19} {'p50':>9} {'p99':>9}  errors"]
    for s in summaries:
        spread = s.spread()
        spread_text = f"({fmt_rate(spread[0])}-{fmt_rate(spread[1])})" if spread else ""
        lines.append(f"  {s.server:<17} {fmt_rate(s.median('requests_per_sec')):>9} "
                     f"{spread_text:>19} {fmt_ms(s.median('p50_ms')):>9} "
                     f"{fmt_ms(s.median('p99_ms')):>9}  {errors_text(s)}")
    by_name = {s.server: s for s in summaries}
    railcar = by_name.get("railcar")
    if railcar:
        for s in summaries:
            if s.server != "railcar":
                lines.append(
                    f"  railcar / {s.server}: req/s "
                    f"{ratio(railcar.median('requests_per_sec'), s.median('requests_per_sec'))}"
                    f" (higher is better), p99 "
                    f"{ratio(railcar.median('p99_ms'), s.median('p99_ms'))} (lower is better)")
    lines.append(one_line(app, summaries))
    return lines


def one_line(app: str, summaries: list[Summary]) -> str:
    """E.g. `hello: railcar 12,345 req/s (p50 2.1 ms, p99 9.8 ms) | gunicorn-gevent ... |
    ratio 1.12x`, the ratio being railcar's req/s over gunicorn-gevent's (else the first peer's).
    """
    parts = []
    for s in summaries:
        flag = " [errors]" if s.errors or s.failures else ""
        parts.append(f"{s.server} {fmt_rate(s.median('requests_per_sec'))} req/s "
                     f"(p50 {fmt_ms(s.median('p50_ms'))}, p99 {fmt_ms(s.median('p99_ms'))})"
                     f"{flag}")
    by_name = {s.server: s for s in summaries}
    peers = [s for s in summaries if s.server != "railcar"]
    if "railcar" in by_name and peers:
        base = by_name.get(BASELINE, peers[0])
        rate = ratio(by_name["railcar"].median("requests_per_sec"),
                     base.median("requests_per_sec"))
        parts.append(f"ratio {rate}")
    return f"{app}: " + " | ".join(parts)


# ---------------------------------------------------------------------------- environment

def versions(wrk_path: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("railcar", "gevent", "gunicorn", "greenlet"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        banner = subprocess.run([wrk_path, "-v"], capture_output=True, text=True, timeout=10)
        out["wrk"] = (banner.stdout or banner.stderr).split()[1]
    except (OSError, IndexError, subprocess.SubprocessError):
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.wrk = servers.find_program("wrk", args.bin_dir)
    if not args.wrk:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2
    found, notes = resolve_servers(args)
    for note in notes:
        print(note)
    if not found:
        print("no server to run", file=sys.stderr)
        return 2
    if "railcar" not in found and not args.no_railcar:
        print("railcar is not installed here; running the peers only")
    env = versions(args.wrk)
    print(f"{os.cpu_count()} CPUs, " + ", ".join(f"{k} {v}" for k, v in env.items()))
    load = " ".join(wrk.command("wrk", "URL", args.wrk_threads, args.connections, args.duration))
    print(f"load: {load} after {args.warmup:g} s warm-up; {args.workers} workers per server; "
          f"{args.rounds} rounds, alternating")
    for name in found:
        print(f"  {name}: {servers.KINDS[name].note}")
    started = time.monotonic()
    rounds = run_all(args, found)
    elapsed = time.monotonic() - started

    print()
    for app in args.apps:
        print("\n".join(report_app(app, summarize(rounds, app, list(found)), args)))
        print()
    bad = [r for r in rounds if not r.ok]
    print(f"{len(rounds)} rounds in {elapsed:.0f} s; "
          + (f"{len(bad)} with errors or failures" if bad else "no errors"))

    if args.json:
        payload = {"settings": {k: (str(v) if isinstance(v, Path) else v)
                                for k, v in vars(args).items()},
                   "environment": dict(env, cpus=os.cpu_count(), machine=platform.machine()),
                   "skipped": notes, "elapsed_s": elapsed,
                   "rounds": [r.to_dict() for r in rounds]}
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"raw rounds written to {args.json}")
    return 1 if bad else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
