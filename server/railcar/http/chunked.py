"""The chunked transfer-coding of a request body (RFC 9112 section 7.1), decoded in Python.

Runs in a worker process, one `ChunkedBody` per chunked request, fed by the request parser
with the bytes that follow the header section. llhttp parses the header section only: its
chunked decoder rejects the optional whitespace RFC 9112 allows in chunk extensions
(`5 ; name = value`) and streams extensions and trailer fields of any size.

Here the metadata of a chunked body, chunk extensions and trailer fields, shares the budget of
the header section: its bytes count against `max_header_size` and its trailer fields against
`max_headers`, both together with the header section's (431 when exceeded); one chunk line
carries at most 4 KiB of extensions (431). A line is never buffered past what these allow,
so memory per connection stays bounded whatever the client sends. Trailer fields are checked
(token name, no control characters in the value) and dropped: WSGI has no way to hand them
to the application.
"""

import re

from .errors import BAD_REQUEST, BODY_TOO_LARGE, HEADERS_TOO_LARGE, HTTPError

__all__ = ["ChunkedBody"]

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
# chunk = chunk-size *( BWS ";" BWS ext-name [ BWS "=" BWS ( token / quoted-string ) ] ) CRLF
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)((?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:"
                         + _TOKEN + rb"|" + _QUOTED + rb"))?)*)\r\n")
_FIELD_NAME = re.compile(_TOKEN)
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # CTLs other than HTAB
_MAX_SIZE_DIGITS = 16  # past 16 significant hex digits a chunk size overflows 64 bits
_SIZE_PART = 64  # room for the size digits (leading zeros included) before extensions count
# Most bytes of extensions on one chunk line: they have no standard use, and a small cap lets
# an oversized line be refused from the first receive, before the application is called.
_MAX_EXTENSIONS = 4096

_LINE, _DATA, _DATA_END, _TRAILER, _DONE = range(5)


class ChunkedBody:
    """Decodes one chunked body into `request.body`; `done` once the last chunk and the
    trailer section have been read.

    `budget` is what is left of `max_header_size` after the header section, `fields_left`
    what is left of `max_headers`; `max_body_size` bounds the decoded body (0: no limit).
    `feed` raises HTTPError for a malformed or oversized body; the parser then stops.
    """

    __slots__ = ("request", "budget", "fields_left", "max_body_size", "state", "line",
                 "left", "done")

    def __init__(self, request, budget, fields_left, max_body_size):
        self.request = request
        self.budget = budget
        self.fields_left = fields_left
        self.max_body_size = max_body_size
        self.state = _LINE
        self.line = bytearray()
        self.left = 0  # bytes of chunk data still to come, or of the CRLF after it
        self.done = False

    def feed(self, data, view, pos, end):
        """Consume `data[pos:end]` (`view` is a memoryview of `data`) up to the end of the
        body at most; return the position where the body ended, or `end`."""
        while pos < end:
            state = self.state
            if state == _DATA:
                stop = min(end, pos + self.left)
                self.request.body.append(bytes(view[pos:stop]))
                self.left -= stop - pos
                pos = stop
                if not self.left:
                    self.state, self.left = _DATA_END, 2
            elif state == _DATA_END:
                if data[pos] != b"\r\n"[2 - self.left]:
                    raise HTTPError(BAD_REQUEST, "chunk data not followed by CRLF")
                pos += 1
                self.left -= 1
                if not self.left:
                    self.state = _LINE
            elif state == _DONE:
                return pos
            else:
                pos = self._line(data, pos, end)
        return pos

    def _line(self, data, pos, end):
        """Buffer a chunk-size or trailer line, within the budget; parse it once complete."""
        newline = data.find(b"\n", pos, end)
        stop = end if newline < 0 else newline + 1
        line = self.line
        if self.state == _LINE:
            room = min(self.budget, _MAX_EXTENSIONS) + _SIZE_PART + 2
        else:
            room = self.budget + 2
        if len(line) + stop - pos > room:
            if self.state == _LINE and not _has_extension(line, data[pos:stop]):
                raise HTTPError(BAD_REQUEST, "chunk size line too long")
            raise HTTPError(HEADERS_TOO_LARGE, "chunk extensions or trailer fields too large")
        line += data[pos:stop]
        if newline >= 0:
            if self.state == _LINE:
                self._chunk_line(bytes(line))
            else:
                self._trailer_line(bytes(line))
            line.clear()
        return stop

    def _chunk_line(self, line):
        match = _CHUNK_LINE.fullmatch(line)
        if match is None:
            raise HTTPError(BAD_REQUEST, "invalid chunk size line")
        digits, extensions = match.groups()
        if len(digits.lstrip(b"0")) > _MAX_SIZE_DIGITS:
            raise HTTPError(BAD_REQUEST, "chunk size too large")
        self.budget -= len(extensions)
        if self.budget < 0 or len(extensions) > _MAX_EXTENSIONS:
            raise HTTPError(HEADERS_TOO_LARGE, "chunk extensions too large")
        size = int(digits, 16)
        request = self.request
        request.body_size += size
        if self.max_body_size and request.body_size > self.max_body_size:
            raise HTTPError(BODY_TOO_LARGE, "request body too large")
        if size:
            self.state, self.left = _DATA, size
        else:
            self.state = _TRAILER

    def _trailer_line(self, line):
        if line == b"\r\n":
            self.state = _DONE
            self.done = True
            return
        name, colon, value = line[:-2].partition(b":")
        if not colon or not _FIELD_NAME.fullmatch(name) or line[-2:] != b"\r\n" \
                or _BAD_VALUE.search(value):
            raise HTTPError(BAD_REQUEST, "invalid trailer field")
        self.budget -= len(name) + len(value)
        self.fields_left -= 1
        if self.budget < 0 or self.fields_left < 0:
            raise HTTPError(HEADERS_TOO_LARGE, "trailer section too large")


def _has_extension(line, more):
    """Whether a chunk-size line being buffered has reached its extensions."""
    head = bytes(line[:_SIZE_PART + 1]) + bytes(more[:_SIZE_PART + 1])
    return bool(re.match(rb"[0-9A-Fa-f]*[ \t;]", head))
