"""bench/memory.py against real processes: `python -m pytest bench`."""

import os
import subprocess
import sys

import psutil
import pytest

import memory


def test_process_pss_is_the_sum_of_its_mappings():
    rollup = memory.process_pss(os.getpid())
    with open(f"/proc/{os.getpid()}/smaps") as smaps:
        mapped = sum(int(line.split()[1]) * 1024 for line in smaps if line.startswith("Pss:"))
    assert rollup > 1_000_000
    assert abs(rollup - mapped) < 0.2 * rollup      # the process runs on between the reads


def test_tree_pss_adds_the_children():
    # A child that forks a grandchild: the whole tree is counted, not only the root.
    code = ("import os, sys, time\n"
            "if os.fork() == 0:\n    time.sleep(60); os._exit(0)\n"
            "sys.stdout.write('up\\n'); sys.stdout.flush(); time.sleep(60)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "up\n"
        pids = memory.tree_pids(child.pid)
        assert len(pids) == 2 and pids[0] == child.pid
        alone = memory.process_pss(child.pid)
        tree = memory.tree_pss(child.pid)
        assert tree > alone + memory.process_pss(pids[1]) * 0.5
        assert memory.tree_pss(os.getpid()) > memory.process_pss(os.getpid()) + alone * 0.5
    finally:
        for pid in reversed(memory.tree_pids(child.pid)):
            os.kill(pid, 9)
        child.wait()


def test_a_gone_process_is_an_error():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with pytest.raises(psutil.NoSuchProcess):
        memory.tree_pss(gone.pid)
