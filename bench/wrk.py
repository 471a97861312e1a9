"""Run wrk once and parse its text report into a WrkResult.

Parsed from `wrk --latency` output: Requests/sec, the latency distribution (50/75/90/99 %),
the average latency, the request count, "Socket errors: connect N, read N, write N, timeout N"
and "Non-2xx or 3xx responses: N". wrk prints the last two lines only when they are non-zero.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import asdict, dataclass, field

# wrk's time units (units.c): us, ms, s, m, h; converted to milliseconds.
TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
SOCKET_ERRORS = ("connect", "read", "write", "timeout")

_TIME = r"([\d.]+)(us|ms|s|m|h)"
_REQUESTS_PER_SEC = re.compile(r"^Requests/sec:\s+([\d.]+)\s*$", re.M)
_PERCENTILE = re.compile(r"^\s+(\d+(?:\.\d+)?)%\s+" + _TIME + r"\s*$", re.M)
_LATENCY_AVG = re.compile(r"^\s+Latency\s+" + _TIME, re.M)
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
    )


def command(wrk: str, url: str, threads: int, connections: int, seconds: float) -> list[str]:
    return [wrk, f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--latency", url]


def run(wrk: str, url: str, threads: int, connections: int,
        seconds: float) -> tuple[WrkResult, str]:
    """Load URL for SECONDS; return the parsed result and wrk's raw stdout.

    Bounded: wrk is killed if it runs 30 s past its duration.
    """
    argv = command(wrk, url, threads, connections, seconds)
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    except subprocess.TimeoutExpired:
        raise WrkError(f"wrk did not finish within {seconds + 30:g} s") from None
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise WrkError(f"wrk exited {done.returncode}: {detail[0]}")
    return parse(done.stdout), done.stdout
