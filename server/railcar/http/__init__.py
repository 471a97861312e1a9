"""railcar's HTTP/1.1 server: strict parsing on httptools, WSGI (PEP 3333) on gevent.

Used by the worker process: `HTTPServer(listeners, app, limits=Limits(...)).start()`, then
`retire(grace)` for a graceful stop or `stop()` for an immediate one.
"""

from .parser import HTTPError
from .server import HTTPServer, Limits

__all__ = ["HTTPError", "HTTPServer", "Limits"]
