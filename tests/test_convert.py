"""railcar.convert: each converter's canonical form and its refusals (the settings rows and
their callers add the key and the file; these say what was expected)."""

from __future__ import annotations

import re

import pytest

from railcar import convert


@pytest.mark.parametrize("check, raw, value", [
    (convert.positive_int, "3", 3),
    (convert.non_negative_int, 0, 0),
    (convert.seconds, "2.5", 2.5),
    (convert.seconds_or_off, 0, 0.0),
    (convert.fraction, "0.05", 0.05),
    (convert.whole(1), 3.0, 3),
    (convert.count_or_percent(1), "25%", "25%"),
    (convert.count_or_percent(0), " 4 ", 4),
    (convert.bind, "[::1]:80", "[::1]:80"),
    (convert.bind_list, "unix:/run/a.sock", ["unix:/run/a.sock"]),
    (convert.proxy_list, ["10.0.0.1", "unix"], ["10.0.0.1/32", "unix"]),
    (convert.url_prefix, "/assets", "/assets/"),
    (convert.relative_dir, "public/", "public"),
    (convert.statuses, [200, "300-399"], "200,300-399"),
    (convert.command, ["nginx", "-s", "reload now"], "nginx -s 'reload now'"),
    (convert.hooks, ["make", ["a", "b"]], [["sh", "-c", "make"], ["a", "b"]]),
    (convert.str_list, "a,b,", ["a", "b"]),
    (convert.optional(convert.text), None, None),
    (convert.env_table, ["A=1=2"], {"A": "1=2"}),
    (convert.deploy_root, "/srv/shop/", "/srv/shop"),
])
def test_canonical_forms(check, raw, value):
    assert check(raw) == value


@pytest.mark.parametrize("check, raw, message", [
    (convert.positive_int, True, "expected a whole number"),
    (convert.seconds, 0, "more than 0 seconds"),
    (convert.seconds, "nan", "expected a number of seconds, not nan"),
    (convert.seconds, float("inf"), "expected a number of seconds, not inf"),
    (convert.seconds_or_off, "-inf", "expected a number of seconds (0: off), not -inf"),
    (convert.seconds_or_zero("end them at once"), -1, "must not be negative (0: end them at once)"),
    (convert.fraction, "nan", "expected a number from 0 to 1, not nan"),
    (convert.positive_int, float("inf"), "expected a whole number, not inf"),
    (convert.whole(0), float("nan"), "expected a whole number"),
    (convert.count_or_percent(1), float("inf"), "expected a whole number"),
    (convert.port, float("inf"), "expected a port number"),
    (convert.whole(1), "3", "expected a whole number"),
    (convert.count_or_percent(1), "0%", "(0, 100]"),
    (convert.text, "a\nb", "control characters"),
    (convert.app_name, "-x", "starting with a letter or digit"),
    (convert.either("smart", "direct"), "fork", "expected 'smart' or 'direct'"),
    (convert.one_of("rollback", "keep"), "undo", "expected one of rollback, keep"),
    (convert.tcp_bind, "unix:/x", "expected HOST:PORT"),
    (convert.name_list, ["a b"], "is not a host name"),
    (convert.host_names, ["shop.example.com\n"], "is not a host name"),
    (convert.nginx_listen, "80; x", "not an nginx listen address"),
    (convert.deploy_root, "/srv", "at least two path components"),
    (convert.app_account, "root", "never runs as root"),
    (convert.env_names, ["1A"], "not a variable name"),
    (convert.statuses, "99", "within 100-599"),
    (convert.boolean, "yes", "expected true or false"),
])
def test_refusals_say_what_was_expected(check, raw, message):
    with pytest.raises((TypeError, ValueError), match=re.escape(message)):
        check(raw)


def test_a_multi_line_env_value_is_named_by_its_variable_only():
    with pytest.raises(ValueError) as error:
        convert.env_lines({"TOKEN": "s3cret\nmore"})
    assert "TOKEN" in str(error.value) and "s3cret" not in str(error.value)
