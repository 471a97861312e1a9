"""boot_nice: a preloader (a direct worker) imports the app at a lower CPU priority and is back
to its own before it forks or serves; and only where it can come back (railcar.priority)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from accounts import accounts, needs_root, shared_dir  # noqa: F401 (fixtures)
from conftest import railcar_command, write_app

APP = '''
import os
IMPORT_NICE = os.getpriority(os.PRIO_PROCESS, 0)     # in the process that imports the app
def application(environ, start_response):
    body = f"{IMPORT_NICE} {os.getpriority(os.PRIO_PROCESS, 0)}".encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
'''
PRIORITY = Path(__file__).resolve().parent.parent / "server" / "railcar" / "priority.py"


@pytest.fixture(scope="module")
def base_nice():
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if os.getuid() != 0:
        pytest.skip("the server restores its priority only as root here (no RLIMIT_NICE)")
    return nice


@pytest.mark.parametrize("args, added", [
    ((), 0),                                              # the default: off
    (("--boot-nice", "10"), 10),
    (("--boot-nice", "5"), 5),
    (("--spawn-method", "direct"), 0),
    (("--spawn-method", "direct", "--boot-nice", "10"), 10),
])
def test_the_app_is_imported_niced_and_served_at_normal_priority(railcar, tmp_path, base_nice,
                                                                  args, added):
    app = write_app(tmp_path / "app", APP)
    server = railcar().start(str(app), "--workers", "2", *args)
    imported, serving = map(int, server.get("/").text.split())
    assert imported == min(base_nice + added, 19)
    assert serving == base_nice
    restarted = server.cli("restart")
    assert restarted.returncode == 0, restarted.stderr
    imported, serving = map(int, server.get("/").text.split())
    assert (imported, serving) == (min(base_nice + added, 19), base_nice)
    server.stop()


def test_a_bad_boot_nice_is_refused_naming_the_setting(tmp_path):
    app = write_app(tmp_path / "app", APP)
    done = subprocess.run([*railcar_command(), "start", str(app), "--boot-nice", "20"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "boot-nice" in done.stderr and "0 to 19" in done.stderr


CHECK = '''
import os, resource, sys, threading
soft, hard, uid, gid = map(int, sys.argv[1:5])
if soft >= 0:
    try:
        resource.setrlimit(resource.RLIMIT_NICE, (soft, hard))
    except ValueError:              # root without CAP_SYS_RESOURCE (a container)
        sys.exit(3)
if uid:
    os.setgroups([]); os.setgid(gid); os.setuid(uid)      # and so no CAP_SYS_NICE
sys.path.insert(0, sys.argv[5])
import priority
lowered = priority.lower(10)
during = os.getpriority(os.PRIO_PROCESS, 0)
started, stop = threading.Event(), threading.Event()
tid = []
def thread():                   # started during the boot: it inherits the lower priority
    tid.append(threading.get_native_id()); started.set(); stop.wait()
worker = threading.Thread(target=thread); worker.start(); started.wait()
in_thread = os.getpriority(os.PRIO_PROCESS, tid[0])
priority.restore()
print(lowered, during, in_thread, os.getpriority(os.PRIO_PROCESS, 0),
      os.getpriority(os.PRIO_PROCESS, tid[0]))
stop.set(); worker.join()
'''


@needs_root()
@pytest.mark.parametrize("account, limit, lowered", [
    (True, (0, 0), False),      # the usual default: a nice value once raised cannot come back
    (True, (0, 20), True),      # RLIMIT_NICE lets it come back to 0 (systemd LimitNICE=+0)
    (False, (-1, -1), True),    # root: CAP_SYS_NICE
])
def test_a_boot_is_niced_only_if_it_can_come_back(accounts, shared_dir, account, limit,
                                                  lowered):
    user = accounts.user() if account else None
    shutil.copy(PRIORITY, shared_dir / "priority.py")
    os.chmod(shared_dir / "priority.py", 0o644)
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    ids = (user.pw_uid, user.pw_gid) if user else (0, 0)
    done = subprocess.run([python, "-c", CHECK, *map(str, limit + ids), str(shared_dir)],
                          capture_output=True, text=True, timeout=30, cwd="/")
    if done.returncode == 3:
        pytest.skip(f"cannot give the account RLIMIT_NICE {limit} here")
    assert done.returncode == 0, done.stderr
    said, during, in_thread, after, thread_after = done.stdout.split()
    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert said == str(lowered)
    niced = min(base + 10, 19) if lowered else base
    assert (int(during), int(in_thread)) == (niced, niced)
    assert (int(after), int(thread_after)) == (base, base), "every thread is back"
