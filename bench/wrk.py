"""Run wrk once and parse its text report into a WrkResult.

Parsed from `wrk --latency` output: Requests/sec, the latency distribution (50/75/90/99 %),
the average and maximum latency, the request count, "Socket errors: connect N, read N, write N,
timeout N" and "Non-2xx or 3xx responses: N". wrk prints the last two lines only when they are
non-zero. wrk runs with bench/tail.lua, which adds "Latency max: N us" (the slowest request to
the microsecond) and, when a threshold is given, "Over N us: N requests" (counted in wrk's
histogram, corrected for coordinated omission like its percentiles: see tail.lua).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

# wrk's time units (units.c): us, ms, s, m, h; converted to milliseconds.
TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
SOCKET_ERRORS = ("connect", "read", "write", "timeout")

_TIME = r"([\d.]+)(us|ms|s|m|h)"
_REQUESTS_PER_SEC = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.M)
_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+" + _TIME + r"\s*$", re.M)
_LATENCY_AVG = re.compile(r"^\s+Latency\s+" + _TIME, re.M)
_LATENCY_MAX = re.compile(r"^\s+Latency\s+\S+\s+\S+\s+" + _TIME, re.M)   # Avg Stdev Max
_EXACT_MAX = re.compile(r"^Latency max: (\d+) us\s*$", re.M)
_OVER = re.compile(r"^Over (\d+) us: (\d+) requests\s*$", re.M)
TAIL_SCRIPT = Path(__file__).resolve().parent / "tail.lua"
OVER_ENV = "BENCH_OVER_US"
_REQUESTS = re.compile(r"^\s+(\d+) requests in " + _TIME + ",", re.M)
_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
_NON_2XX_3XX = re.compile(r"Non-2xx or 3xx responses: (\d+)")


class WrkError(Exception):
    """wrk failed to run, or its output holds no result."""


@dataclass
class WrkResult:
    requests_per_sec: float
    requests: int
    duration_ms: float
    latency_avg_ms: float | None
    percentiles_ms: dict[str, float]          # "50", "75", "90", "99" -> ms
    socket_errors: dict[str, int] = field(default_factory=dict)
    non_2xx_3xx: int = 0
    max_ms: float | None = None               # the slowest request
    over_ms: float | None = None              # the threshold asked for, if any
    over_count: int | None = None             # requests slower than over_ms

    @property
    def p50_ms(self) -> float | None:
        return self.percentiles_ms.get("50")

    @property
    def p99_ms(self) -> float | None:
        return self.percentiles_ms.get("99")

    @property
    def errors(self) -> int:
        """Socket errors of every kind plus non-2xx/3xx responses."""
        return sum(self.socket_errors.values()) + self.non_2xx_3xx

    def error_summary(self) -> str:
        """E.g. "read 12, non-2xx/3xx 3", or "" when clean."""
        parts = [f"{kind} {count}" for kind, count in self.socket_errors.items() if count]
        if self.non_2xx_3xx:
            parts.append(f"non-2xx/3xx {self.non_2xx_3xx}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(p50_ms=self.p50_ms, p99_ms=self.p99_ms, errors=self.errors)
        return data


def _ms(value: str, unit: str) -> float:
    return float(value) * TIME_UNITS_MS[unit]


def parse(output: str) -> WrkResult:
    """Parse the stdout of `wrk --latency`; raise WrkError if it has no Requests/sec line."""
    rate = _REQUESTS_PER_SEC.search(output)
    if rate is None:
        raise WrkError("no 'Requests/sec' line in wrk output")
    requests = _REQUESTS.search(output)
    average = _LATENCY_AVG.search(output)
    errors = _SOCKET_ERRORS.search(output)
    non_2xx = _NON_2XX_3XX.search(output)
    exact_max = _EXACT_MAX.search(output)
    wrk_max = _LATENCY_MAX.search(output)
    over = _OVER.search(output)
    percentiles = {}
    for match in _PERCENTILE.finditer(output):
        label = match.group(1).removesuffix(".0")
        percentiles[label] = _ms(match.group(2), match.group(3))
    return WrkResult(
        requests_per_sec=float(rate.group(1)),
        requests=int(requests.group(1)) if requests else 0,
        duration_ms=_ms(requests.group(2), requests.group(3)) if requests else 0.0,
        latency_avg_ms=_ms(average.group(1), average.group(2)) if average else None,
        percentiles_ms=percentiles,
        socket_errors=dict(zip(SOCKET_ERRORS, map(int, errors.groups())))
        if errors else dict.fromkeys(SOCKET_ERRORS, 0),
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        max_ms=int(exact_max.group(1)) / 1000 if exact_max
        else _ms(wrk_max.group(1), wrk_max.group(2)) if wrk_max else None,
        over_ms=int(over.group(1)) / 1000 if over else None,
        over_count=int(over.group(2)) if over else None,
    )


def command(wrk: str, url: str, threads: int, connections: int, seconds: float,
            script: Path | None = TAIL_SCRIPT, timeout: float | None = None) -> list[str]:
    """wrk's argv; TIMEOUT (seconds, wrk's default 2) is how long a request may take before
    wrk counts it as a timeout error instead of recording its latency."""
    argv = [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency"]
    if timeout is not None:
        argv.append(f"--timeout={timeout:g}s")
    return argv + (["-s", str(script)] if script else []) + [url]


class Load:
    """One wrk run in the background: start it, do something meanwhile, then `wait()`.

    OVER_MS asks wrk to count the requests slower than that (bench/tail.lua); TIMEOUT is
    wrk's --timeout (see command()).
    """

    def __init__(self, wrk: str, url: str, threads: int, connections: int, seconds: float,
                 over_ms: float | None = None, timeout: float | None = None):
        self.seconds = seconds
        env = dict(os.environ)
        env.pop(OVER_ENV, None)
        if over_ms is not None:
            env[OVER_ENV] = str(int(over_ms * 1000))
        argv = command(wrk, url, threads, connections, seconds, timeout=timeout)
        try:
            self.process = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, text=True, env=env)
        except OSError as exc:
            raise WrkError(f"cannot run {wrk}: {exc}") from None

    def wait(self) -> tuple[WrkResult, str]:
        """The parsed result and wrk's raw stdout. Bounded: wrk is killed 30 s past its
        duration."""
        limit = self.seconds + 30
        try:
            stdout, stderr = self.process.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
            raise WrkError(f"wrk did not finish within {limit:g} s") from None
        if self.process.returncode != 0:
            detail = (stderr.strip() or stdout.strip()).splitlines()[-1:] or ["no output"]
            raise WrkError(f"wrk exited {self.process.returncode}: {detail[0]}")
        return parse(stdout), stdout

    def stop(self) -> None:
        """Kill wrk if it still runs (an interrupted round)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate()


def run(wrk: str, url: str, threads: int, connections: int, seconds: float,
        over_ms: float | None = None, timeout: float | None = None) -> tuple[WrkResult, str]:
    """Load URL for SECONDS; return the parsed result and wrk's raw stdout."""
    load = Load(wrk, url, threads, connections, seconds, over_ms, timeout)
    try:
        return load.wait()
    finally:
        load.stop()
