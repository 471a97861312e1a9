"""Trusted proxies: believe X-Forwarded-For/-Proto only from peers we were told to trust.

Runs in a worker. Behind nginx or Apache every request comes from the web server, so the
client's address and scheme arrive in X-Forwarded-For and X-Forwarded-Proto. Anyone can send
those headers, so they count only when the peer itself is trusted: a configured address or
CIDR network, or "unix" for peers on a unix socket (only local users who may open the socket
can be there). Trust is decided once per connection (cached per address); a request from an
untrusted peer costs nothing more.
"""

import ipaddress

__all__ = ["TrustedProxies", "apply_forwarded"]

_CACHE_MAX = 4096
_SCHEMES = {"http": "http", "https": "https"}


class TrustedProxies:
    """`trusts(addr)`: whether a peer may speak for the client ("" is a unix socket peer)."""

    def __init__(self, entries):
        entries = tuple(entries or ())
        self.unix = "unix" in entries
        self.networks = tuple(ipaddress.ip_network(e, strict=False) for e in entries
                              if e != "unix")
        self._cache = {}

    def __bool__(self):
        return self.unix or bool(self.networks)

    def trusts(self, addr):
        if not addr:
            return self.unix
        trusted = self._cache.get(addr)
        if trusted is None:
            trusted = self._match(addr)
            if len(self._cache) < _CACHE_MAX:
                self._cache[addr] = trusted
        return trusted

    def _match(self, addr):
        try:
            ip = ipaddress.ip_address(addr.partition("%")[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.networks if network.version == ip.version)


def apply_forwarded(environ, trusted):
    """Set REMOTE_ADDR and wsgi.url_scheme from a trusted proxy's X-Forwarded-* headers.

    X-Forwarded-For is read from the right (each proxy appends the peer it saw): the client is
    the rightmost address that is not itself a trusted proxy; if all are, the leftmost. Entries
    that are not IP addresses end the walk, so a forged value never becomes REMOTE_ADDR
    unless every proxy after it is trusted.
    """
    forwarded_for = environ.get("HTTP_X_FORWARDED_FOR")
    if forwarded_for:
        client = None
        for item in reversed(forwarded_for.split(",")):
            item = item.strip()
            if not _is_ip(item):
                break
            client = item
            if not trusted.trusts(item):
                break
        if client is not None:
            environ["REMOTE_ADDR"] = client
    proto = environ.get("HTTP_X_FORWARDED_PROTO")
    if proto:
        scheme = _SCHEMES.get(proto.rpartition(",")[2].strip().lower())
        if scheme is not None:
            environ["wsgi.url_scheme"] = scheme
            if scheme == "https" and environ.get("SERVER_PORT") == "80" \
                    and not environ.get("HTTP_HOST", "").rpartition(":")[2].isdigit():
                environ["SERVER_PORT"] = "443"


def _is_ip(text):
    try:
        ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return False
    return True
