"""tests/unit: the pool's logic on the fake process factory (fakes.py), fast and without a
single process: forking or spawning anything here fails the test."""

import os
import subprocess

import gevent.subprocess
import pytest


def _no_process(*args, **kwargs):
    raise AssertionError("a unit test started a process: use the fake factory (fakes.py)")


@pytest.fixture(autouse=True)
def no_processes(monkeypatch):
    for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "execv", "execve"):
        if hasattr(os, name):
            monkeypatch.setattr(os, name, _no_process)
    monkeypatch.setattr(subprocess.Popen, "__init__", _no_process)
    monkeypatch.setattr(gevent.subprocess.Popen, "__init__", _no_process)
