"""The request parser and environ builder, driven by tests/http/cases/*.http (no sockets)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from railcar.http.parser import HTTPError, Request, RequestParser  # noqa: E402
from railcar.http.body import Input  # noqa: E402
from railcar.http.environ import base_environ, build_environ  # noqa: E402
from tests.http.support import load_cases  # noqa: E402

CASES = load_cases()


def outcome(parser, pieces):
    """Feed `pieces`; return ("200", environ-with-_body) or (status, None) or ("close", None)."""
    for piece in pieces:
        parser.feed(piece)
    if not parser.ready:
        return ("close" if parser.in_message else "nothing"), None
    item = parser.ready.popleft()
    if isinstance(item, HTTPError):
        return item.status[:3], None
    try:
        environ = build_environ(base_environ("127.0.0.1", "80"), item, "127.0.0.1", "5000")
    except HTTPError as error:
        return error.status[:3], None
    if item.error is not None:
        return item.error.status[:3], None
    if not item.complete:
        return "close", None
    environ["_body"] = Input(item, pull=None).read().decode("latin-1")
    return "200", environ


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_case_at_once(case):
    status, environ = outcome(RequestParser(), [case.data])
    assert status == case.expect
    for key, value in case.env.items():
        assert environ[key] == value, key


VALID = [case for case in CASES if case.expect == "200" and len(case.data) < 20000]


@pytest.mark.parametrize("case", VALID, ids=[case.name for case in VALID])
def test_valid_case_byte_by_byte(case):
    """Parsing does not depend on how the bytes are split across receives."""
    whole = outcome(RequestParser(), [case.data])
    split = outcome(RequestParser(), [case.data[i:i + 1] for i in range(len(case.data))])
    assert split == whole


def test_there_are_cases_for_every_outcome():
    assert {case.expect for case in CASES} >= {"200", "400", "414", "431", "505", "close"}


def test_pipelined_requests_queue_in_order():
    parser = RequestParser()
    parser.feed(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                b"POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    requests = list(parser.ready)
    assert [r.url for r in requests] == [b"/1", b"/2", b"/3"]
    assert all(r.complete and r.keep_alive for r in requests)
    assert list(requests[1].body) == [b"abc"]


def test_request_is_queued_before_its_body_arrives():
    parser = RequestParser()
    parser.feed(b"POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhello")
    request = parser.ready[0]
    assert not request.complete and b"".join(request.body) == b"hello"
    parser.feed(b"world")
    assert request.complete and b"".join(request.body) == b"helloworld"


def test_error_after_a_good_request_is_queued_behind_it():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nX: a\0b\r\n\r\n")
    good, bad = parser.ready
    assert isinstance(good, Request) and good.complete
    assert isinstance(bad, HTTPError) and bad.status.startswith("400")
    assert parser.closed


def test_bad_chunk_is_attached_to_the_request_being_read():
    parser = RequestParser()
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    request = parser.ready.popleft()
    parser.feed(b"zz\r\n")
    assert not parser.ready
    assert request.complete and request.error.status.startswith("400")
    assert not request.keep_alive
    reader = Input(request, pull=None)
    assert reader.read(3) == b"abc"
    with pytest.raises(HTTPError):
        reader.read(1)


def test_max_body_size_applies_to_chunked_bodies():
    parser = RequestParser(max_body_size=5)
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"4\r\nabcd\r\n4\r\nefgh\r\n0\r\n\r\n")
    request = parser.ready.popleft()
    assert request.error.status.startswith("413")


def test_max_body_size_applies_to_content_length():
    parser = RequestParser(max_body_size=5)
    parser.feed(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\n")
    with pytest.raises(HTTPError, match="413"):
        build_environ(base_environ("h", "80"), parser.ready[0], "", "", max_body_size=5)


def test_smaller_limits():
    parser = RequestParser(max_request_line=10)
    parser.feed(b"GET /0123456789 HTTP/1.1\r\n")
    assert parser.ready[0].status.startswith("414")
    parser = RequestParser(max_headers=2)
    parser.feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n")
    assert parser.ready[0].status.startswith("431")
    parser = RequestParser(max_header_size=20)
    parser.feed(b"GET / HTTP/1.1\r\nA: 0123456789\r\nB: 0123456789\r\n\r\n")
    assert parser.ready[0].status.startswith("431")


def test_a_huge_header_is_refused_before_it_ends():
    """llhttp buffers a header value until it ends; the parser must not wait for that."""
    parser = RequestParser(slack=1024)
    parser.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Huge: ")
    for _ in range(200):
        parser.feed(b"h" * 1024)
        if parser.ready:
            break
    assert parser.ready[0].status.startswith("431")
    assert parser.closed


def test_upgrade_is_served_as_a_plain_request_then_closes():
    parser = RequestParser()
    parser.feed(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"\r\n\x81\x05hello")
    (request,) = parser.ready
    assert request.url == b"/ws" and request.upgrade and not request.keep_alive
    assert parser.closed
    assert parser.upgrade_tail == b"\x81\x05hello"  # the new protocol's, kept for it


def test_upgrade_tail_is_kept_when_the_head_arrives_in_pieces():
    parser = RequestParser()
    head = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r"
    parser.feed(head)
    parser.feed(b"\n\r\n\x81\x02hi")
    assert parser.closed and parser.upgrade_tail == b"\x81\x02hi"


def test_keep_alive_by_version_and_connection_header():
    cases = {b"GET / HTTP/1.1\r\nHost: a\r\n\r\n": True,
             b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n": False,
             b"GET / HTTP/1.0\r\n\r\n": False,
             b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n": True}
    for data, keep_alive in cases.items():
        parser = RequestParser()
        parser.feed(data)
        assert parser.ready[0].keep_alive is keep_alive, data


def test_input_read_and_readline_semantics():
    request = Request("POST", b"/", "1.1", [], True, False)
    request.body.extend([b"line one\nline", b" two\n", b"rest"])
    request.complete = True
    reader = Input(request, pull=None)
    assert reader.readline() == b"line one\n"
    assert reader.read(2) == b"li"
    assert reader.readline(3) == b"ne "
    assert reader.readline() == b"two\n"
    assert list(reader) == [b"rest"]
    assert reader.read(10) == b"" and reader.readline() == b""


def test_input_pulls_and_sends_continue_once():
    request = Request("POST", b"/", "1.1", [], True, False)
    events = []

    def pull():
        events.append("pull")
        request.body.append(b"data")
        request.complete = True

    reader = Input(request, pull, expect_continue=lambda: events.append("continue"))
    assert events == []
    assert reader.read() == b"data"
    assert events == ["continue", "pull"]
