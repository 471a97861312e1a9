"""Worker states, as the master sees them, and the transitions it allows.

    BOOTING -> READY        the worker imported the app and told the master it is ready
    BOOTING -> FAILED       import error, crash or no readiness within boot_timeout
    READY   -> RETIRING     replaced (rolling restart, stop): finishing in-flight requests
    READY   -> EXITED       crashed or killed while serving
    RETIRING -> EXITED      finished and exited (or was killed after the grace period)
    BOOTING -> RETIRING     stop while a worker was still booting
"""

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
