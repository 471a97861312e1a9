"""The Vagrant test VM booted for real: libvirt and QEMU, the box that vagrant/build-box.sh
makes from Debian's archive, systemd as PID 1, then `fab setup` and `fab deploy` of
examples/flaskapp onto it as a user would run them (README, "A Vagrant VM").

Marker `vm`: not part of the main run; `pytest -m vm` runs it (.ci/run does, after the main
suite). The tests share one VM, in order, and destroy it at the end. Skipped, with the reason,
where libvirt cannot run a VM (not Linux, not root, a tool or the vagrant-libvirt plugin
missing). Bounded: every command has a timeout and the whole module about 20 minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmhost import REPO, Vm, why_no_vm

pytestmark = pytest.mark.vm

UNIT = "railcar-flaskapp.service"
APP_ACCOUNT = "flaskapp"
MEASURED: dict[str, object] = {}


def report(name: str, value) -> None:
    """A measurement of this run, printed at the end (and kept in the test's directory)."""
    MEASURED[name] = value


@pytest.fixture(scope="module")
def vm(tmp_path_factory, pytestconfig):
    reason = why_no_vm()     # asked here, not at collection: the main run never pays for it
    if reason:
        pytest.skip(reason)
    vm = Vm(tmp_path_factory.mktemp("vm"))
    vm.start_libvirt()
    try:
        report("box", vm.build_box())
        report("box build seconds (0 = cached)",
               0 if vm.timings["box_cached"] else vm.timings["box"])
        vm.up()
        report("vagrant up seconds", vm.timings["up"])
        yield vm
    finally:
        started = time.monotonic()
        vm.destroy()
        report("vagrant destroy seconds", round(time.monotonic() - started, 1))
        left = vm.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"], 60,
                      check=False).stdout
        (vm.workdir / "measured.json").write_text(json.dumps(MEASURED, indent=2))
        capture = pytestconfig.pluginmanager.getplugin("capturemanager")
        with capture.global_and_fixture_disabled():     # shown even when all pass
            sys.stderr.write("\nVM test measurements:\n" + "".join(
                f"  {key}: {value}\n" for key, value in MEASURED.items()))
        vm.stop_libvirt()
        assert "railcar-default" not in left, f"the domain outlived vagrant destroy: {left}"


def test_boots_with_systemd_as_pid_1(vm):
    assert vm.ssh("ps -o comm= -p 1").stdout.strip() == "systemd"
    deadline = time.monotonic() + 180
    state = ""
    while time.monotonic() < deadline:
        state = vm.ssh("systemctl is-system-running", check=False).stdout.strip()
        if state not in ("initializing", "starting"):
            break
        time.sleep(2)
    failed = vm.ssh("systemctl --failed --no-legend", check=False).stdout
    assert state == "running", f"systemctl is-system-running: {state}; failed: {failed}"


# A Type=notify service in its simplest form: READY=1 and a status line on $NOTIFY_SOCKET.
NOTIFY_PROBE = """\
import os, socket, time
address = os.environ["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\\0" + address[1:]
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    sock.connect(address)
    sock.sendall(b"READY=1\\nSTATUS=probe serving")
time.sleep(600)
"""
NOTIFY_UNIT = """\
[Unit]
Description=railcar VM test: a Type=notify service
[Service]
Type=notify
DynamicUser=yes
ExecStart=/usr/bin/python3 /usr/local/lib/railcar-notify-probe.py
"""


def test_a_type_notify_unit_reaches_active(vm):
    import shlex

    vm.sudo(f"printf %s {shlex.quote(NOTIFY_PROBE)} > /usr/local/lib/railcar-notify-probe.py"
            f" && printf %s {shlex.quote(NOTIFY_UNIT)} > /etc/systemd/system/railcar-probe.service"
            " && systemctl daemon-reload")
    try:
        vm.sudo("systemctl start railcar-probe.service", timeout=180)   # returns on READY=1
        out = vm.ssh("systemctl show railcar-probe.service -p Type -p ActiveState -p SubState "
                     "-p StatusText").stdout
        shown = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        assert shown == {"Type": "notify", "ActiveState": "active", "SubState": "running",
                         "StatusText": "probe serving"}, out
    finally:
        vm.sudo("systemctl stop railcar-probe.service; rm -f /etc/systemd/system/"
                "railcar-probe.service /usr/local/lib/railcar-notify-probe.py; "
                "systemctl daemon-reload", check=False)
