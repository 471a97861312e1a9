"""The event loop of the processes that serve an app: its preloader and its workers.

Runs in each preloader and worker, first thing: `choose_from_spec()` before gevent's hub
exists (railcar.worker calls it before monkey-patching), `after_patch()` right after
monkey-patching, `backend()` once the hub runs. The master keeps gevent's default.

Why it matters: gevent's libev loop on Linux waits with epoll, whose epoll_wait takes its
timeout in whole milliseconds (libev rounds the wait up), so a timer (gevent.sleep, a
monkey-patched time.sleep, a socket timeout) fires up to ~1 ms late: a 20 ms sleep returns
after 20.5-21 ms. The app's `event_loop` setting (spec "event_loop"):
- "auto" (the default): epoll, with sleeps that end on time (railcar.precise_sleep: a
  timerfd in the epoll set armed for the earliest sleep's deadline);
- "epoll": gevent's default, unchanged.
libev's io_uring backend (every timer on time) is not offered: with gevent 26.9's libev a
worker aborts (SIGABRT, "io_uring_enter did not consume all sqes") when an fd is closed while
a watcher on it still waits, which ordinary serving does (seen in a rolling restart over TLS
under load). GEVENT_BACKEND=linux_iouring still selects it, as gevent documents.
An explicit GEVENT_BACKEND or GEVENT_LOOP in the process's environment (the app's `env`,
its env file, or the master's environment) wins: then gevent reads them as it always does
and the setting is not applied.

A preloader's loop is inherited by the workers it forks (gevent re-initialises it in the
child, on the same backend). Standard library only until the hub exists.
"""

from __future__ import annotations

import json
import os

SETTING_VALUES = ("auto", "epoll")
LIBEV_BACKENDS = {"auto": "epoll", "epoll": "epoll"}     # gevent.config.libev_backend
GEVENT_VARIABLES = ("GEVENT_BACKEND", "GEVENT_LOOP")
NAMES = {"linux_iouring": "io_uring"}     # libev's names as railcar says them

_setting: str | None = None     # the value applied; None: gevent's environment decides


def choose(setting: str, environ=os.environ) -> bool:
    """Make gevent's hub, when it is created, use the backend of `setting` (one of
    SETTING_VALUES), unless `environ` names one itself (GEVENT_VARIABLES). True if applied.
    Must run before the hub exists."""
    global _setting
    if setting not in LIBEV_BACKENDS:
        raise ValueError(f"event_loop: expected one of {', '.join(SETTING_VALUES)}, "
                         f"not {setting!r}")
    if any(environ.get(name) for name in GEVENT_VARIABLES):
        _setting = None
        return False
    import gevent

    gevent.config.libev_backend = LIBEV_BACKENDS[setting]
    _setting = setting
    return True


def choose_from_spec(variable: str = "RAILCAR_WORKER") -> bool:
    """`choose` the spec's "event_loop" (the JSON spec in environment `variable`, left there
    for the process to read); "auto" when the spec has none (a master of an older railcar)."""
    try:
        setting = json.loads(os.environ.get(variable, "{}")).get("event_loop") or "auto"
    except (ValueError, AttributeError):
        setting = "auto"
    return choose(setting if setting in LIBEV_BACKENDS else "auto")


def after_patch() -> None:
    """With "auto": sleeps that end on time (railcar.precise_sleep). Call right after
    monkey-patching, before the app is imported."""
    if _setting == "auto":
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
