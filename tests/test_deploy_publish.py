"""The host-side publish under fire, over real OpenSSH to loopback hosts, with load running:
`fab deploy` SIGKILLed at every stage in turn, a disk that fills up, a release whose health
check fails. After each: `current` is what the workers serve (railcar status --json on the
host agrees), marked good; `fab releases` and `fab status` say so; the next deploy needs no
manual step; no client request failed. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from conftest import wait_for
from loadgen import Load
from test_deploy import Site, deploy_wheelhouse, read_until  # noqa: F401  (a fixture)

STAGES = ("lock", "check", "upload", "unpack", "link", "venv", "hooks", "publish", "swap",
          "restart", "health", "mark", "cleanup", "unlock")
BEFORE_PUBLISH = STAGES[:STAGES.index("publish")]
ON_THE_HOST = STAGES[STAGES.index("swap"):]


@pytest.fixture(scope="module")
def site(tmp_path_factory, deploy_wheelhouse):
    site = Site(tmp_path_factory.mktemp("publish"), deploy_wheelhouse)
    site.create("# no requirements\n")
    site.health_path = "/health"
    mounts: list[Path] = []
    site.mounts = mounts
    try:
        site.add_host("host1")
        site.fab("-H", "host1", "setup")
        site.commit("1")
        site.fab("-H", "host1", "deploy")
        yield site
    finally:
        try:
            site.close()
        finally:
            for mount in mounts:
                subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=60)


def publishes_running(root: Path) -> list[int]:
    """Host-side publish processes working on `root`."""
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "railcar.deploy.publish" in cmdline and f'"root": "{root}"' in cmdline:
            found.append(proc.info["pid"])
    return found


def served(site: Site, name: str = "host1") -> set[str]:
    """The releases the ready workers run, from `railcar status --json` on the host."""
    root = site.root(name)
    result = subprocess.run([str(root / "railcar" / "bin" / "railcar"), "status", "--json",
                             "--admin-socket", str(root / "run" / "admin.sock")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return {w["release"] for app in json.loads(result.stdout)["apps"]
            for w in app["workers"] if w["state"] == "ready"}


def sessions_ended(site: Site, name: str = "host1") -> None:
    """Wait until the host's sshd serves no connection: a command the killed fab had already
    sent (the start of a publish) has then run or been dropped, so what follows sees the
    host's final state, not one a late-starting publish is about to change."""
    sshd = psutil.Process(site.hosts[name].proc.pid)
    wait_for(lambda: not sshd.children(), 60, what="the killed fab's SSH sessions to end")


def assert_consistent(site: Site, name: str = "host1") -> str:
    """Once no publish runs: current is good and is what every worker serves, and `fab
    releases` / `fab status` say so. Returns the current release."""
    wait_for(lambda: not publishes_running(site.root(name)), 180, what="the publish to end")
    current = site.current(name)
    release_dir = str((site.root(name) / "releases" / current).resolve())
    assert site.states(name)[current] == "good"
    assert served(site, name) == {release_dir}
    listing = site.fab("-H", name, "releases")
    assert re.search(rf"\* {re.escape(current)} +good ", listing), listing
    assert "publishing" not in listing
    status = json.loads(site.fab("-H", name, "status", "--json").split("\n", 1)[1])
    assert {w["release"] for app in status["apps"] for w in app["workers"]
            if w["state"] == "ready"} == {release_dir}
    return current


def test_sigkill_of_fab_at_every_stage(site):
    load = Load("127.0.0.1", site.ports["host1"], clients=2, max_seconds=900).start()
    ended: dict[str, tuple[str, str]] = {}
    try:
        for stage in STAGES:
            before = site.current()
            site.commit(f"kill-{stage}")
            proc = site.popen_fab("-H", "host1", "deploy")
            try:
                seen = read_until(proc, f"[host1] {stage:<8} ")
            finally:
                proc.kill()
                proc.wait(timeout=30)
            release = re.search(r"^release (\S+):", seen, re.M).group(1)
            sessions_ended(site)
            now = assert_consistent(site)
            ended[stage] = (now, site.states().get(release, "removed"))
            if stage in BEFORE_PUBLISH:     # unless fab got as far as starting the publish
                assert now in (before, release), stage   # before the kill landed
            if stage in ON_THE_HOST:        # the host finished what fab started
                assert now == release, stage
                assert site.get() == f"version kill-{stage}"
        site.commit("after")
        site.fab("-H", "host1", "deploy")
        assert site.get() == "version after"
        assert_consistent(site)
        assert "incomplete" not in site.states().values()
        assert not (site.root() / "deploy.lock").exists()
    finally:
        load.stop()
    print("\nafter SIGKILL at each stage, current / the new release's state:", ended)
    assert load.failures() == [], load.failures()[:3]
    assert len(load.outcomes) > 100


def test_a_failed_release_is_restored_on_the_host_and_logged(site):
    good = site.current()
    site.commit("broken", extra='raise RuntimeError("the broken release cannot import")')
    output = site.fab("-H", "host1", "deploy", ok=False)
    assert "RuntimeError: the broken release cannot import" in output
    assert "restore  ok" in output
    assert assert_consistent(site) == good
    failed = [name for name, state in site.states().items() if state == "failed"]
    log = (site.root() / "releases" / failed[-1] / ".railcar-publish.log").read_text()
    assert log.splitlines()[-1].startswith("outcome failed")
    assert "restore  ok" in log


UNHEALTHY = '''
def application(environ, start_response):
    if environ["PATH_INFO"] == "/health":
        start_response("500 Internal Server Error", [("Content-Length", "7")])
        return [b"db down"]
    start_response("200 OK", [("Content-Length", "17")])
    return [b"version unhealthy"]
'''


def test_an_importable_but_unhealthy_release_answers_no_client_request(site):
    good = site.current()
    (site.app / "wsgi.py").write_text(UNHEALTHY)
    subprocess.run(["git", "-C", str(site.app), "-c", "user.email=t@example.com", "-c",
                    "user.name=t", "commit", "-q", "-am", "unhealthy"], check=True)
    load = Load("127.0.0.1", site.ports["host1"], clients=4, max_seconds=300).start()
    try:
        time.sleep(0.5)
        output = site.fab("-H", "host1", "deploy", ok=False)
        time.sleep(0.5)
    finally:
        load.stop()
    assert "500" in output and "db down" in output, output
    assert load.failures() == [], load.failures()[:3]
    bodies = {outcome.body for outcome in load.outcomes}
    assert b"version unhealthy" not in bodies and len(load.outcomes) > 50
    assert assert_consistent(site) == good
    assert site.states()[sorted(site.states())[-1]] == "failed"


def fill(path: Path, leave_kib: int) -> Path:
    """Fill the filesystem of `path` up to `leave_kib` KiB free with a file; return it."""
    filler = path / "filler"
    with open(filler, "wb") as handle:
        block = b"\0" * (1 << 20)
        try:
            while True:
                stat = os.statvfs(path)
                free = stat.f_bavail * stat.f_frsize
                if free <= leave_kib * 1024:
                    break
                handle.write(block[:min(len(block), free - leave_kib * 1024)] or b"\0")
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs as deploy_to (needs root)")
def test_a_full_disk_is_named_and_the_next_deploy_succeeds(site):
    site.add_host("small")
    root = site.root("small")
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200m,mode=0755", "tmpfs", str(root)],
                   check=True, timeout=60)
    site.mounts.append(root)
    load = Load("127.0.0.1", site.ports["small"], clients=2, max_seconds=600)
    try:
        site.fab("-H", "small", "setup")
        site.commit("roomy")
        site.fab("-H", "small", "deploy")
        load.start()
        # Completely full: the lock cannot even be written.
        filler = fill(root, 0)
        site.commit("full")
        output = site.fab("-H", "small", "deploy", ok=False)
        assert re.search(rf"\[small\] no space left on device: {re.escape(str(root))}/\S+ "
                         rf"\(filesystem {re.escape(str(root))}: \d+ KiB free", output), output
        assert site.get("small") == "version roomy"
        # Room for the release but not for a new virtualenv (the requirements changed).
        os.truncate(filler, max(0, filler.stat().st_size - 3 * 1024 * 1024))
        (site.app / "requirements.txt").write_text("# a new venv\n")
        site.commit("newvenv")
        output = site.fab("-H", "small", "deploy", ok=False)
        assert "[small] no space left on device" in output and "venv stage" in output, output
        assert "I/O error" not in output.split("no space left on device")[0]
        assert site.get("small") == "version roomy"
        assert set(site.states("small").values()) <= {"good", "failed"}
        for venv in (root / "venvs").iterdir():
            assert (venv / ".railcar-complete").exists(), f"half-built {venv} left behind"
        assert not (root / "deploy.lock").exists()
        # Space freed: the next deploy goes through with no manual step.
        filler.unlink()
        site.fab("-H", "small", "deploy")
        assert site.get("small") == "version newvenv"
        assert_consistent(site, "small")
    finally:
        load.stop()
        subprocess.run([str(root / "railcar" / "bin" / "railcar"), "stop", "--admin-socket",
                        str(root / "run" / "admin.sock")], capture_output=True, timeout=90)
        site.hosts["small"].stop()
        subprocess.run(["umount", "-l", str(root)], capture_output=True, timeout=60)
    assert load.failures() == [], load.failures()[:3]
    assert len(load.outcomes) > 50


def test_a_publisher_killed_like_by_a_reboot_leaves_no_release_publishing(site):
    """The host-side publisher itself dies (SIGKILL, as a reboot would end it) during its
    restart: nothing is left `publishing` for ever. `fab releases` and `fab status` say the
    publish was interrupted, and the next deploy marks that release by what is true (good:
    current and served healthy; failed otherwise) before it publishes its own."""
    # Its workers take 3 s to import, so the publisher is still waiting for them when it is
    # killed (a restart of a quick app can be over before the kill arrives).
    site.commit("interrupted", extra="import time\ntime.sleep(3)")
    proc = site.popen_fab("-H", "host1", "deploy")
    try:
        seen = read_until(proc, "[host1] restart ")
        for pid in publishes_running(site.root()):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
    finally:
        proc.kill()
        proc.wait(timeout=30)
    release = re.search(r"^release (\S+):", seen, re.M).group(1)
    sessions_ended(site)
    wait_for(lambda: not publishes_running(site.root()), 60, what="the publishers to die")
    assert site.states()[release] == "publishing"       # what the file says
    listing = site.fab("-H", "host1", "releases")
    assert re.search(rf" {re.escape(release)} +interrupted ", listing), listing
    assert "publishing" not in listing
    status = site.fab("-H", "host1", "status")
    assert "publish interrupted" in status and release in status, status
    # a release a publish killed before its swap: never current, so it did not publish
    older = sorted(name for name, state in site.states().items() if state == "good")[0]
    (site.root() / "releases" / older / ".railcar-state").write_text("publishing\n")
    site.commit("after-interrupt")
    output = site.fab("-H", "host1", "deploy")
    assert f"resolve  {release}: its publish was interrupted; marked" in output, output
    states = site.states()
    assert states.get(older, "removed") in ("failed", "removed")  # marked, maybe cleaned up
    assert states.get(release, "removed") in ("good", "failed", "removed")
    assert "publishing" not in states.values()
    assert site.get() == "version after-interrupt"
    assert_consistent(site)
    log = (site.root() / "revisions.log").read_text()
    assert f"interrupted {release} marked" in log
