"""Benchmark railcar against its peers, side by side in one run.

    python bench/run.py [--peers granian,uwsgi,gunicorn-gevent] [--apps hello,flask,io20,restart]
                        [--rounds 3] [--connections N] [--duration 8] [--workers 2] [--json FILE]

For each app, rounds alternate between the servers (railcar, granian, uwsgi, gunicorn-gevent,
railcar, ...). Each round starts the server fresh on a new loopback port, waits until it
answers GET / with 200, warms it up with an unrecorded wrk run, loads it with
`wrk -t2 -cN -d8s --latency` (N per app: hello 50, flask 50, io20 200), reads the PSS of its
whole process tree, then stops it, so only one server runs at a time. The report gives, per
app and server, the medians over rounds of req/s, p50, p99 and PSS, the errors, and railcar's
ratios to each peer.

The `restart` scenario loads the hello app with wrk -c50 twice per round: a control load, then
a load during which the server restarts gracefully; it reports the slowest request of each,
the difference, the requests slower than the control's slowest, and the errors. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
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

import memory
import servers
import wrk

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
APPS = {
    "hello": REPO_DIR / "examples" / "hello",
    "flask": REPO_DIR / "examples" / "flaskapp",
    "io20": BENCH_DIR / "apps" / "io20",
    "restart": REPO_DIR / "examples" / "hello",
}
DEFAULT_APPS = list(APPS)
CONNECTIONS = {"hello": 50, "flask": 50, "io20": 200, "restart": 50}   # wrk -c per app
IO20_DELAY = 0.02
DEFAULT_PEERS = ["granian", "uwsgi", "gunicorn-gevent"]
RESTART_TARGET_MS = 10.0     # worst request during a restart: at most the control's + this
# wrk --timeout of the restart scenario's loads: a request slower than wrk's default 2 s
# would be a timeout error left out of the worst request; one slower than this still is.
RESTART_WRK_TIMEOUT = 5.0


@dataclass
class Round:
    app: str
    server: str
    number: int
    port: int | None = None
    result: wrk.WrkResult | None = None     # the load (for `restart`: during the restart)
    raw: str = ""
    failure: str = ""            # why the round failed: start, wrk, no answer, the restart
    pss: int | None = None       # bytes, the server's whole tree after the load
    control: wrk.WrkResult | None = None    # `restart` only: the load without a restart
    control_raw: str = ""
    restart: servers.RestartOutcome | None = None
    unsupported: str = ""        # `restart` only: the server has no graceful restart

    @property
    def ok(self) -> bool:
        if self.unsupported:
            return True
        clean = self.result is not None and self.result.errors == 0 and not self.failure
        if self.app == "restart":
            clean = clean and self.control is not None and self.control.errors == 0 \
                and self.restart is not None and self.restart.ok
        return clean

    @property
    def worst_increase_ms(self) -> float | None:
        """`restart`: the slowest request during the restart minus the control's slowest."""
        if self.control is None or self.result is None or self.result.max_ms is None \
                or self.control.max_ms is None:
            return None
        return self.result.max_ms - self.control.max_ms

    def to_dict(self) -> dict:
        data = {"app": self.app, "server": self.server, "round": self.number,
                "port": self.port, "failure": self.failure or None, "pss_bytes": self.pss,
                "result": self.result.to_dict() if self.result else None, "wrk_output": self.raw}
        if self.app == "restart":
            data.update(
                unsupported=self.unsupported or None,
                control=self.control.to_dict() if self.control else None,
                control_wrk_output=self.control_raw,
                restart=vars(self.restart) if self.restart else None,
                worst_increase_ms=self.worst_increase_ms)
        return data


@dataclass
class Summary:
    """The medians of one server's rounds on one app."""
    server: str
    rounds: list[Round] = field(default_factory=list)

    def _values(self, attribute: str, of: str = "result") -> list[float]:
        """ATTRIBUTE of each round's result (OF="result"), control (OF="control"), restart
        outcome (OF="restart"), or of the round itself (OF="round")."""
        values = [getattr(r if of == "round" else getattr(r, of), attribute)
                  for r in self.rounds if of == "round" or getattr(r, of) is not None]
        return [v for v in values if v is not None]

    def median(self, attribute: str, of: str = "result") -> float | None:
        values = self._values(attribute, of)
        return statistics.median(values) if values else None

    def spread(self, attribute: str = "requests_per_sec",
               of: str = "result") -> tuple[float, float] | None:
        values = self._values(attribute, of)
        return (min(values), max(values)) if values else None

    @property
    def errors(self) -> int:
        return sum(r.result.errors for r in self.rounds if r.result) + \
            sum(r.control.errors for r in self.rounds if r.control)

    @property
    def unsupported(self) -> str:
        return next((r.unsupported for r in self.rounds if r.unsupported), "")

    @property
    def failures(self) -> list[str]:
        return [r.failure for r in self.rounds if r.failure]

    @property
    def failed_restarts(self) -> int:
        return sum(1 for r in self.rounds if r.restart is not None and not r.restart.ok)


# ---------------------------------------------------------------------------- command line

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark railcar against peer WSGI servers under wrk, side by side.")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS),
                        help="comma-separated peers to compare with, '' for none, or 'all': "
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
    parser.add_argument("--connections", type=int, help="wrk -c for every app (default: "
                        + ", ".join(f"{a} {c}" for a, c in CONNECTIONS.items()) + ")")
    parser.add_argument("--restart-window", type=float, default=12, help="restart: seconds "
                        "of each of its two loads (default: %(default)s)")
    parser.add_argument("--restart-at", type=float, default=2, help="restart: seconds into "
                        "the second load at which the restart starts (default: %(default)s)")
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
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    if args.restart_at <= 0 or args.restart_window < args.restart_at + 1:
        parser.error("--restart-at must be positive and --restart-window at least "
                     "--restart-at + 1")
    if min(connections(args, app) for app in args.apps) < args.wrk_threads:
        parser.error("--connections must be at least --wrk-threads")
    return args


def connections(args: argparse.Namespace, app: str) -> int:
    """wrk -c for APP: --connections if given, else the app's default."""
    return args.connections or CONNECTIONS[app]


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
    """Start SERVER on APP, warm up, load it once (`restart`: twice), stop it."""
    round_ = Round(app=app, server=server, number=number)
    kind = servers.KINDS[server]
    if app == "restart" and kind.restart is None:
        round_.unsupported = f"{server} has no graceful restart"
        return round_
    try:
        with servers.RunningServer(kind, executable, APPS[app], args.workers,
                                   args.peer_threads, args.boot_timeout) as running:
            round_.port = running.port
            url = f"http://127.0.0.1:{running.port}/"
            clients = connections(args, app)
            if args.warmup:
                wrk.run(args.wrk, url, args.wrk_threads, clients, args.warmup)
            if app == "restart":
                _load_and_restart(round_, running, url, args)
            else:
                round_.result, round_.raw = wrk.run(args.wrk, url, args.wrk_threads, clients,
                                                    args.duration)
                round_.pss = memory.tree_pss(running.process.pid)
            if round_.result and not round_.result.requests:
                round_.failure = "no request was answered"
            if running.process.poll() is not None:
                round_.failure = (f"{server} exited (status {running.process.returncode}) "
                                  "during the load")
    except (servers.ServerError, wrk.WrkError) as exc:
        round_.failure = str(exc)
    except OSError as exc:       # the tree's PSS unreadable: not this user's processes
        round_.failure = f"cannot read {server}'s memory: {exc}"
    return round_


def _load_and_restart(round_: Round, running: servers.RunningServer, url: str,
                      args: argparse.Namespace) -> None:
    """The `restart` round: a control load, then the same load with a restart inside it.

    The second load counts its requests slower than the control's slowest. The restart
    starts --restart-at seconds into it and must be done before the load ends (otherwise the
    round failed: the window did not hold the whole restart).
    """
    clients = connections(args, "restart")
    window = args.restart_window
    round_.control, round_.control_raw = wrk.run(args.wrk, url, args.wrk_threads, clients,
                                                 window, timeout=RESTART_WRK_TIMEOUT)
    load = wrk.Load(args.wrk, url, args.wrk_threads, clients, window,
                    over_ms=round_.control.max_ms, timeout=RESTART_WRK_TIMEOUT)
    try:
        time.sleep(args.restart_at)
        round_.restart = running.restart(timeout=window - args.restart_at)
        round_.result, round_.raw = load.wait()
    finally:
        load.stop()
    if not round_.restart.ok:
        round_.failure = f"restart failed: {round_.restart.detail}"


def describe_round(round_: Round) -> str:
    head = f"  {round_.app:<7} round {round_.number}  {round_.server:<17}"
    if round_.unsupported:
        return f"{head} not supported: {round_.unsupported}"
    if round_.result is None:
        return f"{head} FAILED: {round_.failure.splitlines()[0]}"
    r = round_.result
    if round_.app == "restart":
        c = round_.control
        text = (f"{head} worst {fmt_ms(c.max_ms)} control, {fmt_ms(r.max_ms)} restart "
                f"({fmt_delta(round_.worst_increase_ms)}), {over_text(r)} over control worst;"
                f" restart {round_.restart.seconds:.1f} s")
        errors = "; ".join(f"{name} {e}" for name, e in (("control", c.error_summary()),
                                                          ("restart", r.error_summary())) if e)
    else:
        text = (f"{head} {r.requests_per_sec:>10,.0f} req/s  p50 {fmt_ms(r.p50_ms):>9}"
                f"  p99 {fmt_ms(r.p99_ms):>9}  PSS {fmt_mb(round_.pss)}")
        errors = r.error_summary()
    if errors:
        text += f"  ERRORS: {errors}"
    if round_.failure:
        text += f"  FAILED: {round_.failure.splitlines()[0]}"
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


def fmt_delta(value: float | None) -> str:
    """A latency difference with its sign: +4.2 ms, -0.5 ms."""
    if value is None:
        return "-"
    return ("+" if value >= 0 else "-") + fmt_ms(abs(value))


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def fmt_mb(value: float | None) -> str:
    return "-" if value is None else f"{value / memory.MB:.0f} MB"


def over_text(result: wrk.WrkResult | None) -> str:
    if result is None or result.over_count is None:
        return "-"
    return f"{result.over_count}"


def ratio(numerator: float | None, denominator: float | None) -> str:
    if not numerator or not denominator:
        return "-"
    return f"{numerator / denominator:.2f}x"


def summarize(rounds: list[Round], app: str, names: list[str]) -> list[Summary]:
    summaries = []
    for name in names:
        summaries.append(Summary(name, [r for r in rounds if r.app == app and r.server == name]))
    return summaries


def error_kinds(results: list[wrk.WrkResult]) -> str:
    """The errors of RESULTS added up by kind, e.g. "read 12, non-2xx/3xx 3", or ""."""
    kinds: dict[str, int] = {}
    for result in results:
        for kind, count in result.socket_errors.items():
            kinds[kind] = kinds.get(kind, 0) + count
        kinds["non-2xx/3xx"] = kinds.get("non-2xx/3xx", 0) + result.non_2xx_3xx
    return ", ".join(f"{k} {v}" for k, v in kinds.items() if v)


def errors_text(summary: Summary) -> str:
    """The errors of a server's rounds: wrk's, then failed restarts or rounds; "0" if none.
    For `restart` the control's and the restart's errors are told apart."""
    parts = []
    controls = error_kinds([r.control for r in summary.rounds if r.control])
    loads = error_kinds([r.result for r in summary.rounds if r.result])
    if controls:
        parts.append(f"ERRORS control {controls}")
    if loads:
        parts.append(("ERRORS during restart " if controls or summary.rounds
                      and summary.rounds[0].app == "restart" else "ERRORS ") + loads)
    if summary.failed_restarts:
        parts.append(f"{summary.failed_restarts} restart(s) FAILED")
    elif summary.failures:
        parts.append(f"{len(summary.failures)} round(s) FAILED")
    return "; ".join(parts) or "0"


def report_app(app: str, summaries: list[Summary], args: argparse.Namespace) -> list[str]:
    if app == "restart":
        return report_restart(summaries, args)
    clients = connections(args, app)
    title = (f"{app} (wrk -c{clients}): median of {args.rounds} "
             f"round{'s' if args.rounds > 1 else ''}")
    ceiling = clients / IO20_DELAY if app == "io20" else None
    if ceiling:
        title += f"; 20 ms per request, ceiling {clients} / 0.02 s = {ceiling:,.0f} req/s"
    lines = [title,
             f"  {'server':<17} {'req/s':>9} {'(min-max)':>19} {'p50':>9} {'p99':>9} "
             f"{'PSS':>7}  errors"]
    for s in summaries:
        spread = s.spread()
        spread_text = f"({fmt_rate(spread[0])}-{fmt_rate(spread[1])})" if spread else ""
        rate = s.median("requests_per_sec")
        of_ceiling = f" = {rate / ceiling:.1%} of the ceiling" if ceiling and rate else ""
        lines.append(f"  {s.server:<17} {fmt_rate(rate):>9} "
                     f"{spread_text:>19} {fmt_ms(s.median('p50_ms')):>9} "
                     f"{fmt_ms(s.median('p99_ms')):>9} {fmt_mb(s.median('pss', 'round')):>7}  "
                     f"{errors_text(s)}{of_ceiling}")
    for railcar, s in against_peers(summaries):
        lines.append(
            f"  railcar / {s.server}: req/s "
            f"{ratio(railcar.median('requests_per_sec'), s.median('requests_per_sec'))}"
            f" (higher is better), p99 "
            f"{ratio(railcar.median('p99_ms'), s.median('p99_ms'))}, PSS "
            f"{ratio(railcar.median('pss', 'round'), s.median('pss', 'round'))}"
            " (lower is better)")
    lines.append(one_line(app, summaries))
    return lines


def against_peers(summaries: list[Summary], needed: str | None = None):
    """(railcar's summary, a peer's summary) for each peer, when railcar ran; with `needed`,
    only where both have a median of that figure."""
    railcar = next((s for s in summaries if s.server == "railcar"), None)
    if railcar is None or (needed and railcar.median(needed) is None):
        return
    for s in summaries:
        if s.server != "railcar" and not (needed and s.median(needed) is None):
            yield railcar, s


def report_restart(summaries: list[Summary], args: argparse.Namespace) -> list[str]:
    """The `restart` table: per server the medians over rounds of the control's worst request,
    the worst during the restart, their difference (per round, then the median), the requests
    slower than the control's worst, and how long the restart took."""
    clients = connections(args, "restart")
    lines = [f"restart (hello, wrk -c{clients}, {args.restart_window:g} s loads, restart at "
             f"{args.restart_at:g} s): median of {args.rounds} "
             f"round{'s' if args.rounds > 1 else ''}; target: worst during the restart at most "
             f"the control's + {RESTART_TARGET_MS:g} ms",
             f"  {'server':<17} {'control worst':>13} {'restart worst':>13} {'difference':>11}"
             f" {'(min-max)':>19} {'over':>6} {'restart':>8}  errors"]
    for s in summaries:
        if s.unsupported:
            lines.append(f"  {s.server:<17} not supported ({s.unsupported})")
            continue
        spread = s.spread("worst_increase_ms", "round")
        spread_text = f"({fmt_delta(spread[0])} {fmt_delta(spread[1])})" if spread else ""
        increase = s.median("worst_increase_ms", "round")
        over = s.median("over_count")
        took = s.median("seconds", "restart")
        verdict = ""
        if increase is not None and not s.errors and not s.failures:
            verdict = "  target met" if increase <= RESTART_TARGET_MS else "  target missed"
        lines.append(f"  {s.server:<17} {fmt_ms(s.median('max_ms', 'control')):>13} "
                     f"{fmt_ms(s.median('max_ms')):>13} {fmt_delta(increase):>11} "
                     f"{spread_text:>19} {'-' if over is None else f'{over:g}':>6} "
                     f"{'-' if took is None else f'{took:.1f} s':>8}  {errors_text(s)}{verdict}")
    for railcar, s in against_peers(summaries, "max_ms"):
        lines.append(f"  railcar / {s.server}: worst during the restart "
                     f"{ratio(railcar.median('max_ms'), s.median('max_ms'))}"
                     " (lower is better)")
    parts = []
    for s in summaries:
        if s.unsupported:
            parts.append(f"{s.server} not supported")
            continue
        flag = " [errors]" if s.errors or s.failures else ""
        parts.append(f"{s.server} {fmt_ms(s.median('max_ms', 'control'))} -> "
                     f"{fmt_ms(s.median('max_ms'))} "
                     f"({fmt_delta(s.median('worst_increase_ms', 'round'))}){flag}")
    lines.append("restart: worst request control -> during restart: " + " | ".join(parts))
    return lines


def one_line(app: str, summaries: list[Summary]) -> str:
    """E.g. `hello: railcar 12,345 req/s (p50 2.1 ms, p99 9.8 ms, 55 MB) | granian ... |
    ratio granian 1.12x, gunicorn-gevent 3.90x`: railcar's req/s over each peer's."""
    parts = []
    for s in summaries:
        flag = " [errors]" if s.errors or s.failures else ""
        parts.append(f"{s.server} {fmt_rate(s.median('requests_per_sec'))} req/s "
                     f"(p50 {fmt_ms(s.median('p50_ms'))}, p99 {fmt_ms(s.median('p99_ms'))}, "
                     f"{fmt_mb(s.median('pss', 'round'))}){flag}")
    by_name = {s.server: s for s in summaries}
    peers = [s for s in summaries if s.server != "railcar"]
    if "railcar" in by_name and peers:
        railcar = by_name["railcar"].median("requests_per_sec")
        parts.append("ratio " + ", ".join(
            f"{s.server} {ratio(railcar, s.median('requests_per_sec'))}" for s in peers))
    return f"{app}: " + " | ".join(parts)


# ---------------------------------------------------------------------------- environment

def versions(wrk_path: str) -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("railcar", "gevent", "greenlet", "gunicorn", "granian", "uWSGI", "flask"):
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


def has_flask(bin_dir: Path) -> bool:
    """Whether the servers' Python (BIN_DIR's, else this one) can import Flask."""
    python = bin_dir / "python"
    if not python.is_file():
        return importlib.util.find_spec("flask") is not None
    try:
        return subprocess.run([str(python), "-c", "import flask"], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    servers.exit_on_sigterm()
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
    if "flask" in args.apps and not has_flask(args.bin_dir):
        args.apps.remove("flask")
        notes.append("skipped flask: Flask is not installed (pip install -e '.[bench]')")
        print(notes[-1])
        if not args.apps:
            print("no scenario to run", file=sys.stderr)
            return 2
    env = versions(args.wrk)
    print(f"{os.cpu_count()} CPUs, " + ", ".join(f"{k} {v}" for k, v in env.items()))
    load = " ".join(wrk.command("wrk", "URL", args.wrk_threads, "N", args.duration,
                                script=None))
    print(f"load: {load} (N: " + ", ".join(f"{a} {connections(args, a)}" for a in args.apps)
          + f") after {args.warmup:g} s warm-up; {args.workers} workers per server; "
          f"{args.rounds} rounds, alternating")
    if "restart" in args.apps:
        print(f"restart: two {args.restart_window:g} s loads per round (wrk "
              f"--timeout={RESTART_WRK_TIMEOUT:g}s), the server restarted "
              f"{args.restart_at:g} s into the second")
    for name in found:
        kind = servers.KINDS[name]
        print(f"  {name}: {kind.note}; restart: {kind.restart or 'not supported'}")
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
