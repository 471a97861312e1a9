"""railcar.deploy without hosts: settings validation, command quoting, release choices."""

from __future__ import annotations

import re

import pytest
from invoke import Config

from railcar.deploy import releases as rel
from railcar.deploy.remote import Remote
from railcar.deploy.settings import ConfigError, load


def config_from_file(tmp_path, text: str) -> Config:
    path = tmp_path / "fabric.yaml"
    path.write_text(text)
    config = Config(runtime_path=str(path))
    config.load_runtime()
    return config


def test_settings_defaults_and_per_host(tmp_path):
    config = config_from_file(tmp_path, f"""
railcar:
  app: shop
  source: {tmp_path}
  per_host:
    web2: {{deploy_to: /opt/shop, workers: 4}}
""")
    one = load(config, "web1")
    two = load(config, "web2")
    assert (one.deploy_to, one.workers, one.keep_releases) == ("/srv/shop", 2, 5)
    assert (two.deploy_to, two.workers) == ("/opt/shop", 4)


@pytest.mark.parametrize("body, words", [
    ("keep_releases: 0", ["railcar.keep_releases", "at least 1"]),
    ("deploy_to: relative/path", ["railcar.deploy_to", "absolute"]),
    ("hooks: [[]]", ["railcar.hooks"]),
    ("colour: blue", ["railcar.colour", "unknown setting"]),
    ("shared_dirs: ['../etc']", ["railcar.shared_dirs", "relative"]),
])
def test_bad_settings_name_the_key_and_the_file(tmp_path, body, words):
    config = config_from_file(tmp_path, f"railcar:\n  app: shop\n  source: {tmp_path}\n  {body}\n")
    with pytest.raises(ConfigError) as error:
        load(config, "web1")
    message = str(error.value)
    assert str(tmp_path / "fabric.yaml") in message
    for word in words:
        assert word in message


def test_missing_app_is_named(tmp_path):
    with pytest.raises(ConfigError, match="railcar.app: required"):
        load(config_from_file(tmp_path, f"railcar:\n  source: {tmp_path}\n"))


def test_every_argument_is_quoted():
    text = Remote.command(["sh", "-c", "echo $HOME; rm -rf /"], cwd="/srv/my app",
                          env={"A": "b c"})
    assert text == "cd '/srv/my app' && env 'A=b c' sh -c 'echo $HOME; rm -rf /'"
    with pytest.raises(TypeError):
        Remote.command("ls -l")


def test_setup_and_deploy_run_once_for_all_the_hosts_given_with_dash_h(tmp_path):
    """Fabric calls a task once per -H host and its post-tasks once per run: `deploy` and
    `setup` only enlist their host (the Connection Fabric made) in the run's config, and
    their post-task takes every enlisted host with the task's arguments, once."""
    from types import SimpleNamespace

    from fabric import Config as FabricConfig
    from fabric import Connection, Executor
    from invoke import Call, Context

    from railcar.deploy import tasks

    class Core(list):              # what `fab` parsed: -H a,deploy@b:2222
        remainder = ""

    core = Core([SimpleNamespace(args=SimpleNamespace(hosts=SimpleNamespace(
        value="a,deploy@b:2222")))])
    config = FabricConfig(overrides={"railcar": {"app": "shop", "source": str(tmp_path),
                                                 "hosts": ["c"]}})
    for name in ("deploy", "setup"):
        calls = Executor(tasks.ns, config, core).expand_calls([Call(tasks.ns[name])])
        assert [getattr(call, "init_kwargs", None) for call in calls] == \
            [{"host": "a"}, {"host": "deploy@b:2222"}, None]
        assert calls[2].task is tasks.ns[name].post[0]

    first, second = Connection("a", config=config), Connection("deploy@b:2222", config=config)
    tasks.enlist(first, "deploy", ref="v1")
    tasks.enlist(second, "deploy", ref="v1")
    connections, arguments = tasks.enlisted(Context(config), "deploy")
    assert connections == [first, second] and connections[1].port == 2222
    assert arguments == {"ref": "v1"}
    # the next call of the task in the same run starts anew; without -H: railcar.hosts
    tasks.enlist(Context(config), "deploy", ref=None)
    connections, _ = tasks.enlisted(Context(config), "deploy")
    assert [c.host for c in connections] == ["c"]


def releases(*rows):
    return [rel.Release(name, state, 0, "", current) for name, state, current in rows]


def test_previous_good_skips_failed_and_incomplete():
    inventory = releases(("1", "good", False), ("2", "failed", False),
                         ("3", "good", True), ("4", "failed", False), ("5", "incomplete", False))
    assert rel.previous_good(inventory).name == "1"


def test_cleanup_keeps_n_good_and_never_current_or_previous():
    inventory = releases(("1", "good", False), ("2", "good", False), ("3", "failed", False),
                         ("4", "good", True), ("5", "good", False), ("6", "incomplete", False))
    removed = {r.name for r in rel.to_remove(inventory, keep=1, protect=set())}
    # 5 is the newest good (kept), 4 is current, 2 is the previous good before current.
    assert removed == {"1", "3", "6"}


def test_systemd_unit_shares_the_railcar_config_template(tmp_path):
    from railcar.deploy.paths import Paths
    from railcar.deploy.command import start_argv
    from railcar.deploy.unit import render_unit

    config = load(config_from_file(tmp_path, f"railcar:\n  app: shop\n  source: {tmp_path}\n"),
                  "web1")
    paths = Paths(config.deploy_to)
    unit = render_unit(paths, config)
    assert "Type=notify" in unit and "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "--daemon" not in unit
    assert "--log-file" not in unit     # the journal is the log of a unit
    assert f"ExecStart={paths.railcar} start {paths.current} --name shop" in unit
    assert "--daemon" in start_argv(paths, config)   # the plain daemon path keeps it
    assert "--log-file" in start_argv(paths, config)
    result = verify_unit(tmp_path / "railcar-shop.service", unit)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "railcar-shop.service" in line and "is not executable" not in line]
    assert not complaints, result.stdout + result.stderr


def verify_unit(path, unit: str):
    """`systemd-analyze verify` of `unit` written at `path` (skips the test without it)."""
    import shutil
    import subprocess

    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    path.write_text(unit)
    return subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True,
                          timeout=60)


def test_privilege_settings(tmp_path):
    base = f"railcar:\n  app: Shop\n  source: {tmp_path}\n"
    config = load(config_from_file(tmp_path, base))
    assert config.user == "shop" and config.deploy_user is None        # default: the app's name
    assert config.trust_new_hosts is False and config.known_hosts is None
    config = load(config_from_file(tmp_path, base + "  known_hosts: keys/known_hosts\n"))
    assert config.known_hosts == str(tmp_path / "keys" / "known_hosts")  # next to fabric.yaml
    for body, words in (("user: root", ["railcar.user", "never runs as root"]),
                        ("secrets: [A-B]", ["railcar.secrets", "not a variable name"]),
                        ("env: {A: \"x\\ny\"}", ["railcar.env", "spans lines"]),
                        ("trust_new_hosts: maybe", ["railcar.trust_new_hosts"])):
        with pytest.raises(ConfigError) as error:
            load(config_from_file(tmp_path, base + f"  {body}\n"))
        for word in words:
            assert word in str(error.value)
        assert "x\ny" not in str(error.value)


def test_secrets_come_from_this_machines_environment(tmp_path):
    from railcar.deploy.settings import env_from_machine

    config = load(config_from_file(tmp_path, f"railcar:\n  app: shop\n  source: {tmp_path}\n"
                                             "  env: {A: one}\n  secrets: [TOKEN, KEY]\n"))
    assert env_from_machine(config, {"TOKEN": "t0k", "KEY": "k3y"}) == \
        {"A": "one", "TOKEN": "t0k", "KEY": "k3y"}
    with pytest.raises(ConfigError, match="KEY not set"):
        env_from_machine(config, {"TOKEN": "t0k"})
    with pytest.raises(ConfigError) as error:
        env_from_machine(config, {"TOKEN": "a\nsecret", "KEY": "k"})
    assert "TOKEN" in str(error.value) and "secret" not in str(error.value).split("TOKEN")[1]


def test_env_file_round_trips_through_the_servers_reader():
    from railcar.deploy import envfile
    from railcar.envfile import parse

    env = {"PLAIN": "x", "QUOTES": 'say "hi" it\'s', "SLASH": "a\\b\\\"c", "SPACES": "  both ",
           "HASH": "#not a comment", "EQUALS": "a=b=c", "EMPTY": ""}
    assert parse(envfile.render(env), "railcar.env") == env
    content = envfile.render(env)
    record = envfile.sum_file(content)
    assert envfile.matches(record, content) and not envfile.matches(record, content + "X=1\n")
    assert "hi" not in record and not envfile.matches(None, content)


def test_masker_hides_every_secret_value():
    from railcar.deploy.remote import masker

    mask = masker(["s3cret", "s3cret-longer", ""])
    assert mask("a s3cret-longer and s3cret") == "a ***** and *****"


@pytest.mark.parametrize("deploy_to", ["/", "/srv", "/srv/", "/srv/../etc", "/srv//app"])
def test_a_deploy_root_too_close_to_the_top_is_refused(tmp_path, deploy_to):
    config = config_from_file(tmp_path, f"railcar:\n  app: shop\n  source: {tmp_path}\n"
                                        f"  deploy_to: {deploy_to}\n")
    with pytest.raises(ConfigError, match="railcar.deploy_to"):
        load(config, "web1")


def test_paths_removed_must_lie_under_the_deploy_root():
    from railcar.deploy.paths import Paths

    paths = Paths("/srv/shop")
    assert paths.release("20261123T101500.000001Z-abc1234").startswith("/srv/shop/releases/")
    for bad in ("..", "../../etc", "x/../../.."):
        with pytest.raises(ValueError, match="not a path under the deploy root"):
            paths.release(bad)
    with pytest.raises(ValueError):
        paths.venv("../railcar")


def test_release_names_are_unique_within_a_second_and_sort_by_time():
    from railcar.deploy.build import release_name

    now = 1_795_000_000.25
    names = [release_name("abc1234", now + step / 1000) for step in range(5)]
    assert len(set(names)) == 5 and names == sorted(names)
    assert re.match(r"^\d{8}T\d{6}\.\d{6}Z-abc1234$", names[0])


@pytest.mark.parametrize("body, words", [
    ("batch_size: 0", ["railcar.batch_size", "at least 1"]),
    ("batch_size: 150%", ["railcar.batch_size", "percentage"]),
    ("failure_budget: lots", ["railcar.failure_budget", "percentage"]),
    ("canary_hosts: -1", ["railcar.canary_hosts"]),
    ("on_batch_failure: panic", ["railcar.on_batch_failure", "rollback, keep"]),
])
def test_bad_fleet_settings_name_the_key(tmp_path, body, words):
    config = config_from_file(tmp_path, f"railcar:\n  app: shop\n  source: {tmp_path}\n  {body}\n")
    with pytest.raises(ConfigError) as error:
        load(config, "web1")
    for word in words:
        assert word in str(error.value)


def test_fleet_plan_canaries_then_batches_and_the_budget():
    from railcar.deploy.fleet import plan
    from railcar.deploy.settings import resolve_hosts

    class FakeHost:     # plan only orders hosts
        def __init__(self, name):
            self.name = name

    hosts = [FakeHost(f"h{i}") for i in range(10)]

    def names(canary_hosts, batch_size):
        config = type("C", (), {"canary_hosts": canary_hosts, "batch_size": batch_size})
        return [[h.name for h in batch] for batch in plan(hosts, config)]

    assert names(0, "100%") == [[f"h{i}" for i in range(10)]]
    assert names(1, "30%") == [["h0"], ["h1", "h2", "h3"], ["h4", "h5", "h6"], ["h7", "h8", "h9"]]
    assert names(2, 4) == [["h0", "h1"], ["h2", "h3", "h4", "h5"], ["h6", "h7", "h8", "h9"]]
    assert resolve_hosts("25%", 10, 1) == 3      # a batch rounds up
    assert resolve_hosts("25%", 10, 0) == 2      # a budget rounds down
    assert resolve_hosts("5%", 10, 1) == 1 and resolve_hosts(3, 10, 0) == 3


def test_a_state_file_is_rewritten_in_place(tmp_path):
    from railcar.deploy.publish import set_state

    release = tmp_path / "r"
    release.mkdir()
    set_state(str(release), "publishing")
    inode = (release / ".railcar-state").stat().st_ino
    set_state(str(release), "good")
    assert (release / ".railcar-state").read_text() == "good\n"
    assert (release / ".railcar-state").stat().st_ino == inode   # no new file, no new block


def test_the_host_side_modules_import_without_fabric():
    """publish.py (and what it imports) runs in the host's server venv: no Fabric there."""
    import subprocess
    import sys

    code = ("import sys\nfor name in ('paramiko', 'fabric', 'invoke'): sys.modules[name] = None\n"
            "import railcar.deploy.publish, railcar.deploy.probe\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_loopback_hosts_are_a_dev_tool_outside_the_package():
    """tests/loopback.py starts sshd with generated keys: never shipped in railcar."""
    import importlib.util

    assert importlib.util.find_spec("railcar.deploy.loopback") is None
    assert importlib.util.find_spec("loopback").origin.endswith("tests/loopback.py")


def test_the_readme_lists_exactly_the_stages_table():
    """README's stage list is the one `python -m railcar.deploy.pipeline` derives from
    STAGES: a stage added, renamed or reordered in the table shows in the docs."""
    from conftest import REPO
    from railcar.deploy.pipeline import STAGES, markdown, stages_of

    text = (REPO / "README.md").read_text()
    block = text.split("<!-- stages -->\n", 1)[1].split("<!-- /stages -->", 1)[0]
    assert block == markdown()
    assert [s.name for s in stages_of("deploy")][:2] == ["lock", "check"]
    assert {s.name for s in STAGES} == set(re.findall(r"^\| (\w+) \|", block, re.M)) - {"stage"}


def test_every_flow_is_derived_from_the_stages_table():
    """Each stage is written once: setup and the deploy's finish share the nginx row,
    deploy and rollback the lock, publish and unlock rows."""
    from railcar.deploy.pipeline import STAGES, stages_of

    names = [s.name for s in STAGES]
    assert len(names) == len(set(names))
    flows = {flow: [s.name for s in stages_of(flow)]
             for flow in ("setup", "deploy", "rollback", "revert", "restart")}
    assert flows["setup"][-1] == "nginx" and flows["deploy"][-2:] == ["nginx", "unlock"]
    assert flows["deploy"].index("hooks") < flows["deploy"].index("publish")
    assert flows["rollback"] == ["lock", "pick", "publish", "unlock"]
    assert all(flows[flow] for flow in flows)


def timeout_stop_sec(unit: str) -> int:
    [line] = [line for line in unit.splitlines() if line.startswith("TimeoutStopSec=")]
    return int(line.split("=", 1)[1])


def test_systemd_units_give_the_master_its_wait_for_a_retiring_worker(tmp_path):
    """The deploy's unit and `railcar config systemd` take their stop timeout from the one
    rule the master waits by (supervision.retire_timeout): long_lived_timeout + 2 s counts
    when it is longer than graceful_timeout, for the defaults and for a config's values."""
    from railcar import config as server_config
    from railcar.deploy.paths import Paths
    from railcar.deploy.unit import render_unit
    from railcar.render import render
    from railcar.settings import BY_NAME
    from railcar.supervision import retire_timeout

    graceful, long_lived = (BY_NAME[key].default for key in
                            ("graceful_timeout", "long_lived_timeout"))
    assert long_lived + 2 > graceful      # the defaults: the long-lived wait is the longer
    wait = retire_timeout(graceful, long_lived)
    assert wait == long_lived + 2
    assert retire_timeout(90, 30) == 90 and retire_timeout(5, 0) == 5

    config = load(config_from_file(tmp_path, f"railcar:\n  app: shop\n  source: {tmp_path}\n"),
                  "web1")
    deploy_unit = render_unit(Paths(config.deploy_to), config)
    assert timeout_stop_sec(deploy_unit) == int(wait + 30)

    (tmp_path / "app").mkdir()

    def rendered(app_keys: str) -> str:
        path = tmp_path / "railcar.toml"
        path.write_text(f'[server]\n[[apps]]\nname = "shop"\nroot = "app"\nuser = "nobody"\n'
                        f'{app_keys}')
        loaded = server_config.load({"config": str(path)}, None, starting=False)
        return render("systemd", loaded, railcar="/usr/bin/railcar")

    assert timeout_stop_sec(rendered("")) == timeout_stop_sec(deploy_unit)
    assert timeout_stop_sec(rendered("long_lived_timeout = 100\n")) == int(102 + 30)
    assert timeout_stop_sec(rendered("long_lived_timeout = 0\n")) == int(graceful + 30)


def test_each_connection_has_its_own_remote_session():
    """A host's commands go to that host's one `sh`: never to another host's, even when the
    connections share one Fabric config (as a run's connections do)."""
    from fabric import Connection
    from fabric import Config as FabricConfig

    from railcar.deploy.remote import Session

    shared = FabricConfig()
    one, two = Connection("one", config=shared), Connection("two", config=shared)
    assert Session.of(one) is not Session.of(two)
    assert Session.of(one) is Session.of(one) and Session.of(one).connection is one
    assert Session.of(two).connection is two


class _FakeChannel:
    """A session channel whose shell answers each command with `payload`, then the end
    markers, handed out in small pieces (a marker split across reads)."""

    def __init__(self, payload: bytes):
        import queue

        self.payload, self.closed = payload, False
        self.out, self.err = queue.Queue(), queue.Queue()

    def exec_command(self, command):
        assert command == "exec sh"

    def sendall(self, data: bytes):
        mark = re.search(rb"railcar-done-[0-9a-f]+", data).group()
        pieces = [self.payload[i:i + 4096] for i in range(0, len(self.payload), 4096)]
        tail = mark + b" 3\n"
        pieces += [tail[i:i + 5] for i in range(0, len(tail), 5)]
        for piece in pieces:
            self.out.put(piece)
        err = mark + b"\n"
        for i in range(0, len(err), 3):
            self.err.put(err[i:i + 3])

    def recv(self, size):
        return self.out.get(timeout=30)

    def recv_stderr(self, size):
        return self.err.get(timeout=30)

    def close(self):
        self.closed = True
        self.out.put(b"")
        self.err.put(b"")


def test_a_session_finds_its_end_marker_split_across_reads_after_much_output():
    import time
    from types import SimpleNamespace

    from railcar.deploy.remote import Session

    payload = b"".join(b"line %d\n" % i for i in range(100_000))     # ~1 MB
    channel = _FakeChannel(payload)
    transport = SimpleNamespace(open_session=lambda: channel, is_active=lambda: True)
    connection = SimpleNamespace(open=lambda: None, transport=transport)
    lines: list[str] = []
    started = time.monotonic()
    result = Session(connection).run("host", "cat big", 30, lines.append)
    assert result.exited == 3 and result.stdout.encode() == payload and result.stderr == ""
    assert len(lines) == 100_000 and lines[-1] == "line 99999"
    assert time.monotonic() - started < 20
    channel.close()
