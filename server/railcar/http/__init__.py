"""railcar's HTTP/1.1 server: strict parsing on httptools, WSGI (PEP 3333) on gevent.

Used by the worker process: `HTTPServer(listeners, app, limits=Limits(...)).start()`, then
`retire(grace)` for a graceful stop or `stop()` for an immediate one; and by the master for
its own small listeners (railcar.responder: the metrics endpoint, the answer while an app is
down), so every HTTP byte railcar reads goes through the same parser and limits.

One module per role:
- server.py: accepting (the accept policy, the connection cap), retiring, stats;
- state.py: the ServerState the server owns and its connections update (counters, the
  retiring flag, the open connections), and the Service they serve with;
- connection.py: one client connection, request after request;
- parser.py, chunked.py, errors.py: bytes to Requests, or the HTTPError to refuse them with;
- environ.py, body.py, wsgi.py: the WSGI environ, wsgi.input, the Response (start_response,
  write, framing); wire.py: sending, the Date header, the one close-response builder;
- proxies.py, requestinfo.py, accesslog.py, deadline.py, websocket.py: trusted proxies,
  request id and queue time, the access log line, max_request_time, WebSocket hand-over.
"""

from .parser import HTTPError
from .server import HTTPServer, Limits

__all__ = ["HTTPError", "HTTPServer", "Limits"]
