"""The header fields a response remembers as checked (railcar.http.wsgi._FIELDS): a remembered
field never lets a bad one through, and the memory stays bounded whatever an app sends."""

from __future__ import annotations

import pytest

from railcar.http import wsgi
from railcar.http.parser import RequestParser
from railcar.http.state import ServerState


@pytest.fixture(autouse=True)
def fresh_memory(monkeypatch):
    """Each test starts with nothing remembered, and leaves the module's memory as it was."""
    monkeypatch.setattr(wsgi, "_FIELDS", {})


def _response():
    parser = RequestParser()
    parser.feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    return wsgi.Response(None, ServerState(10), parser.ready.popleft(), True, "id")


def test_remembered_fields_still_refuse_bad_ones_and_keep_their_meaning():
    good = [("Content-Type", "text/plain"), ("Content-Length", "5"), ("Connection", "close")]
    for _ in range(2):  # the second time from what was remembered
        response = _response()
        response.start_response("200 OK", good)
        assert response.fields == "Content-Type: text/plain\r\n"
        assert response.length == 5 and response.app_close
    assert ("Content-Type", "text/plain") in wsgi._FIELDS
    for headers, error in (
            ([("Content-Type", "text/plain\r\nX-Evil: 1")], ValueError),
            ([("Content-Length", "5"), ("Content-Length", "6")], ValueError),
            ([("Content-Length", "+5")], ValueError),
            ([("Content-Type", b"text/plain")], TypeError),
            ([(b"Content-Type", "text/plain")], TypeError),
            ([(["Content-Type"], "text/plain")], TypeError),
            ([("Bad Name", "text/plain")], ValueError)):
        response = _response()
        with pytest.raises(error):
            response.start_response("200 OK", good[:1] + headers)
        assert response.status is None  # nothing of a bad list is kept


def test_fields_that_change_with_every_response_do_not_grow_the_memory_without_bound():
    for i in range(wsgi._FIELDS_MAX + 100):
        _response().start_response("200 OK", [("ETag", f'"{i}"'), ("X-Long", "v" * 200 + str(i))])
    assert len(wsgi._FIELDS) <= wsgi._FIELDS_MAX
    assert not any(name == "X-Long" for name, _ in wsgi._FIELDS)
    response = _response()  # past the bound, fields are still checked and sent
    response.start_response("200 OK", [("ETag", '"new"'), ("Content-Length", "3")])
    assert response.fields == 'ETag: "new"\r\n' and response.length == 3
    with pytest.raises(ValueError):
        _response().start_response("200 OK", [("ETag", "a\nb")])
