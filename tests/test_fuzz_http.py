"""Fuzzing the HTTP layer with hypothesis, bounded for CI (about 20 s together).

- In process: for any input, the parser never raises, and its outcome does not depend on how
  the bytes are split across receives.
- Over a real socket, against a real `railcar start`: the rules of tests/http/fuzz.py (no
  crash, no replaced worker, no 5xx, no hang, a well-formed answer or none).

RAILCAR_FUZZ_EXAMPLES raises the number of socket examples (default 600); bench/fuzz.py
runs the same checks for a given time and saves failing inputs as case files.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from railcar.http.parser import HTTPError, Request, RequestParser  # noqa: E402
from tests.http.fuzz import (Target, case_text, cuts_strategy, requests_strategy,  # noqa: E402
                             split)
from tests.http.support import load_case  # noqa: E402

SOCKET_EXAMPLES = int(os.environ.get("RAILCAR_FUZZ_EXAMPLES", "600"))
_SETTINGS = dict(deadline=None, database=None, derandomize=False,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                        HealthCheck.filter_too_much])


def outcome(pieces):
    """What the parser makes of `pieces`: requests (with body and error) and errors."""
    parser = RequestParser(max_header_size=4096, max_headers=20, max_request_line=1024,
                           slack=1024)
    for piece in pieces:
        parser.feed(piece)
    items = []
    for item in parser.ready:
        if isinstance(item, Request):
            items.append(("request", item.method, item.url, item.version,
                          tuple(item.headers), b"".join(item.body), item.complete,
                          item.error and item.error.status, item.keep_alive))
        else:
            assert isinstance(item, HTTPError)
            items.append(("error", item.status))
    return items, parser.closed


@settings(max_examples=800, **_SETTINGS)
@given(data=requests_strategy(), cuts=cuts_strategy())
def test_parser_outcome_does_not_depend_on_the_split(data, cuts):
    assert outcome(split(data, cuts)) == outcome([data])


@pytest.fixture(scope="module")
def target():
    target = Target()
    yield target
    target.close()


def test_fuzz_over_a_real_socket(target):
    @settings(max_examples=SOCKET_EXAMPLES, **_SETTINGS)
    @given(data=requests_strategy(), cuts=cuts_strategy())
    def one(data, cuts):
        target.check(data, cuts)

    one()


def test_case_text_round_trips(tmp_path):
    data = bytes(range(256)) + b"{3*x}\r\n\r\nGET / HTTP/1.1\r\n"
    path = tmp_path / "c.http"
    path.write_text("# expect: 400\n# note: a note\n" + case_text(data) + "\n",
                    encoding="latin-1")
    assert load_case(path).data == data
