"""TLS on an app's TCP binds in standalone mode: the server-side context from certfile/keyfile.

Runs in the master, which checks the files when it starts and before every spawn batch (a
restart onto a missing, unreadable or mismatched pair is refused, the old workers keep
serving), and in every worker, which builds its own context when it boots: the files are read
again on each restart, so a rolling restart serves a renewed certificate.

Defaults are those of ssl.create_default_context(Purpose.CLIENT_AUTH) (OpenSSL's current
cipher list, no SSLv2/3), plus: TLS 1.2 at least, no TLS compression (CRIME), the server's
cipher preference, no client-initiated renegotiation, ALPN "http/1.1". Client certificates
are not asked for.

`ssl` is imported by the functions that use it: the master imports this module with its
config, and only a master with a TLS app needs ssl (about 1.3 MB a process keeps).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

__all__ = ["TLSError", "server_context"]

MINIMUM_VERSION = "TLSv1_2"     # a member of ssl.TLSVersion


class TLSError(ValueError):
    """The certificate or key cannot be used; the message names the setting and the file."""


def server_context(certfile: str, keyfile: str | None = None,
                   ssl_module=None) -> ssl.SSLContext:
    """A server SSLContext serving `certfile` (PEM: the certificate, then any intermediates)
    with `keyfile` (PEM private key; None: the key is in `certfile`). `ssl_module`: the
    stdlib's `ssl` (None), or `gevent.ssl` in a worker (its sockets cooperate with the hub).
    Raises TLSError naming `certfile` or `keyfile` and the file that is wrong."""
    import ssl

    _readable("certfile", certfile)
    if keyfile:
        _readable("keyfile", keyfile)
    context = (ssl_module or ssl).create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion[MINIMUM_VERSION]
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
                        | getattr(ssl, "OP_NO_RENEGOTIATION", 0))
    context.set_alpn_protocols(["http/1.1"])
    try:
        # A password callback, so an encrypted key fails here instead of OpenSSL asking for
        # its passphrase on the terminal.
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except ssl.SSLError as exc:
        raise TLSError(_explain(exc, certfile, keyfile)) from None
    except OSError as exc:
        raise TLSError(f"certfile {certfile}: cannot be loaded: {exc.strerror or exc}") from None
    return context


def _no_passphrase() -> bytes:
    return b""


def _readable(key: str, path: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise TLSError(f"{key}: cannot read {path}: {exc.strerror or exc}") from None


def _explain(exc: ssl.SSLError, certfile: str, keyfile: str | None) -> str:
    """Which of the two files is wrong, from OpenSSL's reason."""
    reason = (exc.reason or str(exc)).upper()
    if "MISMATCH" in reason:
        return (f"keyfile {keyfile or certfile} does not match the certificate in certfile "
                f"{certfile} (the key of another certificate?)")
    if not _has_certificate(certfile):
        return f"certfile {certfile}: no PEM certificate in it ({exc.reason or exc})"
    return (f"keyfile {keyfile or certfile}: no usable PEM private key in it (or it needs a "
            f"passphrase, which railcar does not ask for) ({exc.reason or exc})")


def _has_certificate(certfile: str) -> bool:
    import ssl

    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=certfile)
    except (ssl.SSLError, OSError):
        return False
    return True
