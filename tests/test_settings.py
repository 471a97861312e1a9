"""railcar.settings: the one table, its typed views, its one ConfigError, and README.md kept
in step with it (every row documented, every default the README states the table's)."""

from __future__ import annotations

import dataclasses
import os
import re

import pytest
from click.testing import CliRunner

from railcar import settings
from railcar.settings import SETTINGS, ConfigError, rows

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


@pytest.fixture(scope="module")
def readme() -> str:
    with open(README, encoding="utf-8") as handle:
        return handle.read()


def documented(text: str, setting: settings.Setting) -> bool:
    """The README names the row: its flag, or its key in backticks, as a TOML key
    (`key = `) or as a YAML key (`key:`)."""
    key = re.escape(setting.key or setting.name)
    if setting.flag and re.search(rf"{re.escape(setting.flag)}\b", text):
        return True
    return bool(re.search(rf"`{key}`|^\s*{key} = |(^\s*|`){key}:", text, re.M))


@pytest.mark.parametrize("setting", [s for s in SETTINGS if s.section != "nginx"],
                         ids=lambda s: f"{s.section}.{s.name}")
def test_every_row_is_documented_in_the_readme(readme, setting):
    assert documented(readme, setting), (
        f"README.md does not mention the {setting.section} setting {setting.name!r} "
        f"({setting.flag or setting.key or 'railcar.' + setting.name})")


def test_every_nginx_key_is_in_the_readmes_nginx_example(readme):
    block = readme[readme.index("  nginx:\n"):]
    block = block[:block.index("```")]
    for setting in rows("nginx"):
        assert re.search(rf"^\s+{setting.name}:", block, re.M), setting.name


def test_the_defaults_the_readme_states_are_the_tables(readme):
    """Rows of README tables shaped `| \\`name\\` (\\`--flag\\`) | DEFAULT [s] | ...`."""
    found = re.findall(r"^\| `(\w+)` \(`--[\w-]+`\) \| ([\d.]+)(?: s)? \|", readme, re.M)
    assert len(found) >= 8
    for name, stated in found:
        assert float(stated) == settings.BY_NAME[name].default, name
    # `| \`--flag ARG\` / \`key\` | ... default VALUE |` (the health check's table)
    found = re.findall(r"^\| `--[\w-]+[^`]*` / `(\w+)` \|.*; default `?([\w.-]+)`? \|$",
                       readme, re.M)
    assert len(found) >= 2
    for name, stated in found:
        default = settings.BY_NAME[name].default
        assert (float(stated) == default if isinstance(default, float)
                else stated == str(default)), name


def test_every_flag_is_in_railcar_start_help():
    from railcar.cli import main

    result = CliRunner().invoke(main, ["start", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    for setting in rows("app", "limits", "supervision", "server"):
        if setting.flag:
            assert setting.flag in result.output, setting.flag


def test_sections_and_names():
    assert {s.section for s in SETTINGS} == {"app", "limits", "supervision", "server",
                                             "deploy", "nginx"}
    for section in {s.section for s in SETTINGS}:
        names = [s.name for s in rows(section)]
        assert len(names) == len(set(names)), section
    server = [s.name for s in rows(*settings.APP_SECTIONS, "server")]
    assert len(server) == len(set(server)) and set(settings.BY_NAME) == set(server)
    for setting in rows(*settings.APP_SECTIONS, "server"):
        if setting.flag:
            assert setting.flag.startswith("--") and setting.help.strip()


def test_every_default_passes_its_own_converter():
    """A default converts without error, into a canonical form that converts to itself (what
    a rendered or re-read value goes through again)."""
    converted = 0
    for setting in SETTINGS:
        if setting.default is not None:
            value = setting.convert(setting.default)
            assert setting.convert(value) == value, setting.name
            converted += 1
    assert converted > len(SETTINGS) / 2


def test_views_carry_the_tables_defaults():
    from railcar.deploy.settings import DEFAULTS, NGINX_DEFAULTS, DeployConfig
    from railcar.http import Limits as HTTPLimits
    from railcar.views import Limits, Supervision

    assert HTTPLimits is Limits
    for view, section in ((Limits, "limits"), (Supervision, "supervision")):
        built = view()
        assert {f.name for f in dataclasses.fields(view)} == {s.name for s in rows(section)}
        for setting in rows(section):
            assert getattr(built, setting.name) == setting.convert(setting.default)
    assert set(DEFAULTS) == {s.name for s in rows("deploy")}
    assert NGINX_DEFAULTS == {s.name: s.default for s in rows("nginx")}
    fields = {f.name for f in dataclasses.fields(DeployConfig)}
    assert fields == set(DEFAULTS) - {"per_host"} | {"host"}
    assert DEFAULTS["workers"] == settings.BY_NAME["workers"].default


def test_a_view_without_a_rows_field_is_refused_at_import():
    with pytest.raises(TypeError, match="missing \\['max_workers'\\]"):
        @dataclasses.dataclass(frozen=True)
        @settings.view("supervision")
        class Partial:
            spawn_method: str
            environment: str
            max_requests: int
            max_requests_jitter: int
            memory_limit: int
            idle_timeout: float


def test_one_config_error_for_server_and_deploy(tmp_path):
    from railcar import config
    from railcar.deploy import settings as deploy_settings

    assert deploy_settings.ConfigError is ConfigError
    with pytest.raises(ConfigError, match="option --workers: workers: must be at least 1"):
        config.load({s.name: None for s in SETTINGS} | {"workers": 0}, str(tmp_path))
    with pytest.raises(ConfigError, match=r"^fabric\.yaml: railcar\.workers: must be at least 1"):
        deploy_settings.validate({"app": "a", "source": "/", "workers": 0},
                                 lambda key: "fabric.yaml", None)


def test_a_subtable_names_the_bad_key():
    with pytest.raises(settings.SubkeyError) as error:
        settings.subtable("nginx", {"sites_dir": "relative"})
    assert error.value.key == "sites_dir" and "absolute" in str(error.value)
    with pytest.raises(ValueError, match="unknown key 'colour'"):
        settings.subtable("nginx", {"colour": 1})
    assert settings.subtable("nginx", None)["test_command"] == "nginx -t"


SECONDS_ROWS = [s for s in SETTINGS
                if s.convert.__name__ in ("seconds", "seconds_or_off", "seconds_or_zero")]


@pytest.mark.parametrize("setting", SECONDS_ROWS, ids=lambda s: s.name)
@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_a_seconds_setting_refuses_nan_and_infinity_naming_its_key(tmp_path, setting, raw):
    """From a flag and from railcar.toml (TOML's own nan and inf floats), the error names
    the key and the value: no comparison refuses NaN, and an infinite timeout is none."""
    from railcar import config

    with pytest.raises(ConfigError) as error:
        config.load({s.name: None for s in SETTINGS} | {setting.name: raw}, str(tmp_path))
    assert f"option {setting.flag}: {setting.key}: " in str(error.value)
    assert f"not {raw} (got '{raw}')" in str(error.value)
    table = "server" if setting.section == "server" else "app"
    (tmp_path / "railcar.toml").write_text(f"[{table}]\n{setting.key} = {raw}\n")
    with pytest.raises(ConfigError, match=rf"railcar\.toml \[{table}\]: {setting.key}: "):
        config.load({s.name: None for s in SETTINGS}, str(tmp_path))


def test_the_seconds_rows_are_found():
    names = {s.name for s in SECONDS_ROWS}
    assert {"graceful_timeout", "long_lived_timeout", "max_request_time",
            "keepalive_timeout"} <= names


@pytest.mark.parametrize("key", [s.name for s in rows("deploy")
                                 if s.convert.__name__ == "whole"])
@pytest.mark.parametrize("raw", [float("nan"), float("inf")])
def test_a_deploy_number_refuses_nan_and_infinity_naming_its_key(key, raw):
    from railcar.deploy import settings as deploy_settings

    with pytest.raises(ConfigError, match=rf"^fabric\.yaml: railcar\.{key}: expected a whole "):
        deploy_settings.validate({"app": "a", "source": "/", key: raw},
                                 lambda key: "fabric.yaml", None)


def test_long_lived_timeout_says_what_0_means():
    """0 ends long-lived connections at once: it does not turn anything off."""
    from railcar import config

    with pytest.raises(ConfigError) as error:
        config.load({s.name: None for s in SETTINGS} | {"long_lived_timeout": "-1"}, ".")
    assert str(error.value) == ("option --long-lived-timeout: long_lived_timeout: must not be "
                                "negative (0: end them at once) (got '-1')")
    assert "off" not in settings.BY_NAME["long_lived_timeout"].help.split("(0:")[-1]
