"""Worker states, as the master sees them, and the transitions it allows.

    BOOTING -> READY        the worker imported the app and told the master it is ready
    BOOTING -> FAILED       import error, crash or no readiness within boot_timeout
    READY   -> RETIRING     replaced (rolling restart, stop): finishing in-flight requests
    READY   -> EXITED       crashed or killed while serving
    RETIRING -> EXITED      finished and exited (or was killed after the grace period)
    BOOTING -> RETIRING     stop while a worker was still booting
"""

from __future__ import annotations

from dataclasses import dataclass

BOOTING = "booting"
READY = "ready"
RETIRING = "retiring"
EXITED = "exited"
FAILED = "failed"

ALLOWED = {
    READY: {BOOTING},
    FAILED: {BOOTING},
    RETIRING: {READY, BOOTING},
    EXITED: {READY, RETIRING},
}

# States of a worker that counts toward the app's wanted number of workers.
SERVING = {BOOTING, READY}


class StateError(Exception):
    pass


def check_transition(current: str, new: str) -> None:
    if current not in ALLOWED.get(new, ()):
        raise StateError(f"worker cannot go from {current} to {new}")


# --- the app's spawning: Supervisor's BACKOFF, for one app's pool -----------------------------
#
#     RUNNING -> BACKOFF    a spawn failed (boot error, crash at boot, failed health check):
#                           nothing is spawned before `retry_at`, 1 s after the first failure,
#                           doubling with each failure in a row up to MAX_BACKOFF
#     BACKOFF -> BACKOFF    the retry failed too (the delay doubles)
#     BACKOFF -> RUNNING    a new worker booted (by reconcile, a restart or a replacement)
#
# The state is a value: a frozen Spawning, replaced whole on each transition, so the count of
# failures and the retry time are part of the state and never left over beside it.

RUNNING = "running"
BACKOFF = "backoff"
MAX_BACKOFF = 60.0


def backoff_delay(failures: int) -> float:
    """Seconds to wait after `failures` failed spawns in a row."""
    return min(2.0 ** (failures - 1), MAX_BACKOFF)


@dataclass(frozen=True)
class Spawning:
    """The app's spawning state (RUNNING or BACKOFF), immutable."""

    state: str = RUNNING
    failures: int = 0           # failed spawns in a row; 0 when RUNNING
    retry_at: float = 0.0       # time.monotonic(); BACKOFF only

    def may_spawn(self, now: float) -> bool:
        """Whether reconcile may start a worker at `now` (time.monotonic())."""
        return self.state == RUNNING or now >= self.retry_at

    def failed(self, now: float) -> Spawning:
        """RUNNING/BACKOFF -> BACKOFF: one more failure in a row."""
        failures = self.failures + 1
        return Spawning(BACKOFF, failures, now + backoff_delay(failures))

    def succeeded(self) -> Spawning:
        """BACKOFF/RUNNING -> RUNNING."""
        return Spawning()

    @property
    def delay(self) -> float:
        return backoff_delay(self.failures) if self.state == BACKOFF else 0.0

    def as_dict(self, now: float) -> dict:
        return {"state": self.state, "failures": self.failures,
                "retry_in": max(self.retry_at - now, 0.0) if self.state == BACKOFF else None}
