"""The Vagrant test VM booted for real: libvirt and QEMU, the box that vagrant/build-box.sh
makes from Debian's archive, systemd as PID 1, then `fab setup` and `fab deploy` of
examples/flaskapp onto it as a user would run them (README, "A Vagrant VM").

Marker `vm`: not part of the main run; `pytest -m vm` runs it (.ci/run does, after the main
suite). The tests share one VM, in order, and destroy it at the end. Skipped, with the reason,
where libvirt cannot run a VM (not Linux, not root, a tool or the vagrant-libvirt plugin
missing). Bounded: every command has a timeout; the module takes 15-30 minutes under QEMU
emulation on a busy 2-core host (.ci/run stops it at 35).
"""

from __future__ import annotations

import json
import re
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

@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """railcar's wheel and everything the server venv and the app need: the VM has no
    network, the deploy installs from these (pip --no-index --find-links)."""
    house = tmp_path_factory.mktemp("vm-wheels")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(house),
                    f"{REPO}[server]", "-r", str(REPO / "examples" / "flaskapp" / "requirements.txt"),
                    "virtualenv"], check=True, timeout=900)
    return house


@pytest.fixture(scope="module")
def fab_config(vm, wheelhouse) -> Path:
    """vagrant/vm.yaml as the README uses it, with this run's wheelhouse and known_hosts."""
    text = (REPO / "vagrant" / "vm.yaml").read_text()
    for key, value in (("wheelhouse", wheelhouse), ("known_hosts", vm.known_hosts)):
        text, count = re.subn(rf"(?m)^  {key}: .*$", f"  {key}: {value}", text)
        assert count == 1, f"vagrant/vm.yaml sets railcar.{key} once"
    path = vm.workdir / "vm-test.yaml"
    path.write_text(text)
    return path


def unit_properties(vm: Vm) -> dict[str, str]:
    out = vm.ssh(f"systemctl show {UNIT} -p Type -p ActiveState -p SubState -p User "
                 "-p MainPID -p StatusText -p NRestarts").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def server_status(vm: Vm) -> dict:
    """`railcar status --json` as the deploy account, through the admin socket's group."""
    out = vm.ssh(f"/srv/flaskapp/railcar/bin/railcar status --json --admin-socket "
                 f"/srv/flaskapp/run/admin.sock", user_host="deploy@railcar-vm").stdout
    return json.loads(out)


def worker_pids(vm: Vm) -> set[int]:
    return {w["pid"] for app in server_status(vm)["apps"] for w in app["workers"]
            if w["state"] == "ready"}


def deploy_under_load(vm: Vm, fab_config: Path, name: str) -> tuple[str, dict]:
    proc, stop = vm.start_load(8080, "/health")
    try:
        time.sleep(2)
        started = time.monotonic()
        output = vm.fab("-f", str(fab_config), "-H", "deploy@railcar-vm", "deploy")
        report(f"{name} seconds", round(time.monotonic() - started, 1))
        time.sleep(2)
    finally:
        result = Vm.stop_load(proc, stop)
    return output, result


def test_setup_through_sudo_then_deploy_as_the_deploy_account(vm, fab_config):
    started = time.monotonic()
    vm.fab("-f", str(fab_config), "-H", "vagrant@railcar-vm", "setup")
    report("fab setup seconds", round(time.monotonic() - started, 1))
    started = time.monotonic()
    output = vm.fab("-f", str(fab_config), "-H", "deploy@railcar-vm", "deploy")
    report("first deploy seconds", round(time.monotonic() - started, 1))
    assert "--no-index" in (REPO / "vagrant" / "vm.yaml").read_text()

    unit = unit_properties(vm)
    assert (unit["Type"], unit["ActiveState"], unit["SubState"]) == \
        ("notify", "active", "running"), unit
    assert unit["User"] == APP_ACCOUNT
    # every process of the unit (master, preloader, workers) runs as the app account
    accounts = vm.ssh(f"cat /sys/fs/cgroup$(systemctl show {UNIT} -p ControlGroup --value)"
                      "/cgroup.procs | xargs -n 1 ps -o user= -p").stdout.split()
    assert len(accounts) >= 3 and set(accounts) == {APP_ACCOUNT}, accounts
    workers = worker_pids(vm)
    assert len(workers) == 2
    owners = vm.ssh("ps -o user= -p " + ",".join(map(str, workers))).stdout.split()
    assert owners == [APP_ACCOUNT] * 2
    # flask came from the uploaded wheelhouse into the release's venv (the VM has no index)
    where = vm.ssh("/srv/flaskapp/current/.venv/bin/python -c "
                   "'import flask, os; print(os.path.realpath(flask.__file__))'",
                   user_host="deploy@railcar-vm").stdout
    assert where.startswith("/srv/flaskapp/venvs/"), where
    body = vm.http(8080, "/health")         # nginx on the guest's port 80, forwarded
    assert json.loads(body)["status"] == "ok"
    assert "deployed" in output


def test_redeploy_under_load_through_the_forwarded_port(vm, fab_config):
    before = worker_pids(vm)
    output, load = deploy_under_load(vm, fab_config, "repeat deploy")
    assert load["requests"] > 20, load
    assert load["failures"] == 0, load
    assert "reused" in output           # same requirements: the venv is reused
    after = worker_pids(vm)
    assert len(after) == 2 and not after & before


def test_systemctl_reload_is_a_rolling_restart(vm):
    master = unit_properties(vm)["MainPID"]
    before = worker_pids(vm)
    proc, stop = vm.start_load(8080, "/health")
    try:
        time.sleep(2)
        vm.sudo(f"systemctl reload {UNIT}")
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            now = worker_pids(vm)
            if len(now) == 2 and not now & before:
                break
            time.sleep(2)
        time.sleep(2)
    finally:
        load = Vm.stop_load(proc, stop)
    if not (len(now) == 2 and not now & before):
        journal = vm.sudo(f"journalctl -u {UNIT} --no-pager -o cat -n 40", check=False).stdout
        raise AssertionError(f"workers before {before}, after {now}; the journal:\n{journal}")
    assert unit_properties(vm)["MainPID"] == master
    assert load["failures"] == 0 and load["requests"] > 0, load


def test_the_journal_holds_the_app_log(vm):
    journal = vm.sudo(f"journalctl -u {UNIT} --no-pager -o cat").stdout
    assert "SIGHUP: rolling restart of every app" in journal, journal[-3000:]  # the reload
    assert "flaskapp: rolling restart done" in journal, journal[-3000:]
    for pid in worker_pids(vm):
        assert f"flaskapp: spawned worker {pid} " in journal, journal[-3000:]


def test_systemd_analyze_security(vm):
    out = vm.ssh(f"systemd-analyze security {UNIT} --no-pager").stdout
    line = [l for l in out.splitlines() if "Overall exposure level" in l][0]
    exposure = float(line.split(":")[1].split()[0])
    report("systemd-analyze security", line.split(":", 1)[1].strip())
    assert exposure < 4.0, out[-3000:]


def test_vagrant_reload_brings_the_app_back(vm):
    started = time.monotonic()
    vm.vagrant("reload", timeout=900)
    report("vagrant reload seconds", round(time.monotonic() - started, 1))
    body = vm.wait_http(8080, "/health", timeout=300)
    assert json.loads(body)["status"] == "ok"
    unit = unit_properties(vm)
    assert (unit["ActiveState"], unit["User"]) == ("active", APP_ACCOUNT), unit
