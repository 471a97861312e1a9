"""The HTTPError a request can be refused with, and the statuses the parsers use."""

__all__ = ["HTTPError", "BAD_REQUEST", "URI_TOO_LONG", "HEADERS_TOO_LARGE", "BODY_TOO_LARGE",
           "BAD_VERSION"]


class HTTPError(Exception):
    """A request the server refuses. `status` is the full status string ("400 Bad Request").

    The connection that raised it is answered with `status` (if no response has started yet)
    and then closed: after a framing error nothing that follows on the wire can be trusted.
    """

    def __init__(self, status, detail=""):
        super().__init__(f"{status}: {detail}" if detail else status)
        self.status = status
        self.detail = detail


BAD_REQUEST = "400 Bad Request"
URI_TOO_LONG = "414 URI Too Long"
HEADERS_TOO_LARGE = "431 Request Header Fields Too Large"
BODY_TOO_LARGE = "413 Content Too Large"
BAD_VERSION = "505 HTTP Version Not Supported"
