"""Configuration: the settings table, railcar.toml files and the errors users see."""

from __future__ import annotations

import os

import pytest

from railcar import config
from railcar.settings import SETTINGS, ConfigError


def cli(**values):
    """CLI values; as root, --allow-root (these apps live in root's temporary dirs)."""
    return {s.name: None for s in SETTINGS} | {"allow_root": os.getuid() == 0 or None} | values


def test_defaults_for_an_app_dir(tmp_path):
    server = config.load(cli(), str(tmp_path))
    [app] = server.apps
    assert app.root == str(tmp_path)
    assert app.binds == ["127.0.0.1:8000"]
    assert app.workers == 2
    assert server.graceful_timeout == 30.0


def test_cli_overrides_railcar_toml(tmp_path):
    (tmp_path / "railcar.toml").write_text(
        '[app]\nworkers = 3\nmodule = "site:app"\nenv = { A = "1" }\n'
        '[server]\ngraceful_timeout = 7\n')
    server = config.load(cli(workers="5", port="9001", env=("B=2",)), str(tmp_path))
    [app] = server.apps
    assert app.workers == 5
    assert app.module == "site:app"
    assert app.binds == ["127.0.0.1:9001"]
    assert app.env == {"B": "2"}
    assert server.graceful_timeout == 7.0


@pytest.mark.parametrize("toml, message", [
    ('[app]\nworkers = "two"\n', "workers"),
    ('[app]\nworkers = 0\n', "workers: must be at least 1"),
    ('[app]\nbind = ["nowhere"]\n', "bind"),
    ('[app]\nwrokers = 2\n', "unknown key 'wrokers'"),
    ('[ap]\nworkers = 2\n', "unknown table"),
    ('[app\n', "not valid TOML"),
])
def test_bad_railcar_toml_names_key_and_file(tmp_path, toml, message):
    (tmp_path / "railcar.toml").write_text(toml)
    with pytest.raises(ConfigError) as error:
        config.load(cli(), str(tmp_path))
    assert message in str(error.value)
    assert str(tmp_path / "railcar.toml") in str(error.value)


def test_bad_cli_value_names_the_option(tmp_path):
    with pytest.raises(ConfigError, match="--workers"):
        config.load(cli(workers="-1"), str(tmp_path))


def test_multi_app_config_names_the_app(tmp_path):
    (tmp_path / "one").mkdir()
    path = tmp_path / "railcar.toml"
    path.write_text('[[apps]]\nname = "one"\nroot = "one"\nbind = ["unix:/tmp/one.sock"]\n'
                    'user = "nobody"\n'
                    '[[apps]]\nname = "two"\nroot = "missing"\n')
    with pytest.raises(ConfigError) as error:
        config.load(cli(config=str(path)), None)
    assert "(two)" in str(error.value) and "root" in str(error.value)
    assert str(path) in str(error.value)


def test_body_limits_reach_the_worker_limits(tmp_path):
    (tmp_path / "railcar.toml").write_text(
        "[app]\nclient_body_timeout = 7.5\nclient_body_min_rate = 0\n")
    [app] = config.load(cli(), str(tmp_path)).apps
    assert app.limits["client_body_timeout"] == 7.5
    assert app.limits["client_body_min_rate"] == 0
    [app] = config.load(cli(client_body_timeout="3"), str(tmp_path)).apps
    assert app.limits["client_body_timeout"] == 3.0
    (tmp_path / "plain").mkdir()
    [app] = config.load(cli(), str(tmp_path / "plain")).apps
    assert (app.limits["client_body_timeout"], app.limits["client_body_min_rate"]) == (60.0, 500)


@pytest.mark.parametrize("values, message", [
    ({"client_body_timeout": "0"}, "--client-body-timeout"),
    ({"client_body_min_rate": "-1"}, "--client-body-min-rate"),
])
def test_bad_body_limits_name_the_option(tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        config.load(cli(**values), str(tmp_path))
