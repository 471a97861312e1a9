"""The event loop of the processes that serve an app: its preloader and its workers.

Runs in each preloader and worker: `after_patch()` right after monkey-patching (railcar.worker
calls it), `backend()` once the hub runs. Every process keeps gevent's own choice of backend
(epoll on Linux); the master is not concerned.

Why it matters: gevent's libev loop on Linux waits with epoll, whose epoll_wait takes its
timeout in whole milliseconds (libev rounds the wait up), so a timer (gevent.sleep, a
monkey-patched time.sleep, a socket timeout) fires up to ~1 ms late: a 20 ms sleep returns
after 20.5-21 ms. The app's `event_loop` setting (spec "event_loop"):
- "auto" (the default): sleeps that end on time (railcar.precise_sleep: a timerfd in the
  epoll set armed for the earliest sleep's deadline);
- "epoll": gevent's, unchanged.
libev's io_uring backend (every timer on time) is not offered: with gevent 26.9's libev a
worker aborts (SIGABRT, "io_uring_enter did not consume all sqes") when an fd is closed while
a watcher on it still waits, which ordinary serving does (seen in a rolling restart over TLS
under load). GEVENT_BACKEND=linux_iouring still selects it, as gevent documents.
An explicit GEVENT_BACKEND or GEVENT_LOOP in the process's environment (the app's `env`,
its env file, or the master's environment) wins: gevent reads them as it always does and
the sleeps are left as gevent's.

A preloader's loop is inherited by the workers it forks (gevent re-initialises it in the
child, on the same backend).
"""

from __future__ import annotations

import json
import os

GEVENT_VARIABLES = ("GEVENT_BACKEND", "GEVENT_LOOP")
NAMES = {"linux_iouring": "io_uring"}     # libev's names as railcar says them


def after_patch(variable: str = "RAILCAR_WORKER", environ=os.environ) -> None:
    """With the spec's "event_loop" "auto" (the JSON spec in environment `variable`; "auto"
    when it has none or an unknown value: a master of another railcar) and no
    GEVENT_VARIABLES in `environ`: sleeps that end on time (railcar.precise_sleep). Call
    right after monkey-patching, before the app is imported."""
    try:
        setting = json.loads(environ.get(variable, "{}")).get("event_loop") or "auto"
    except (ValueError, AttributeError):
        setting = "auto"
    if setting != "epoll" and not any(environ.get(name) for name in GEVENT_VARIABLES):
        from railcar import precise_sleep

        precise_sleep.install()


def backend() -> str:
    """The backend of this process's hub ("epoll"; "io_uring" for libev's linux_iouring),
    else as gevent does ("poll", "select", ...; "libuv" for a libuv loop)."""
    import gevent

    loop = gevent.get_hub().loop
    name = getattr(loop, "backend", None)
    if not isinstance(name, str):
        name = "libuv" if "libuv" in type(loop).__module__ else str(name)
    return NAMES.get(name, name)
