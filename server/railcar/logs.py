"""The server log: master messages and every worker's output, to a file or stderr.

Runs in the master. USR1 reopens the file (logrotate's `postrotate` sends it). The file is
opened without following a symlink (O_NOFOLLOW): a master running as root must not append to
whatever file another account pointed a planted link at.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from typing import TextIO


class LogFileError(RuntimeError):
    """The log file cannot be opened; the message names it and says why."""


_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC


def open_log_file(path: str, line_buffered: bool = False) -> TextIO:
    """`path` opened for appending (created 0640), never through a symlink. Used for the
    server log here and for access logs in the workers. Raises LogFileError."""
    try:
        fd = os.open(path, _FLAGS, 0o640)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LogFileError(f"log file {path} is a symlink ({exc.strerror}): railcar "
                               "does not follow one there (point it at the real file)") from None
        raise LogFileError(f"cannot open the log file {path}: {exc.strerror}") from None
    return open(fd, "a", encoding="utf-8", buffering=1 if line_buffered else -1)


class SafeFileHandler(logging.FileHandler):
    """logging.FileHandler appending to the file at `path`, opened with O_NOFOLLOW
    (open_log_file, through the `_open` FileHandler calls for every open).

    `reopen()` opens the path again and swaps the stream in with StreamHandler.setStream, so
    a file logrotate moved away is replaced by a new one at the path (what USR1 asks for;
    logging.handlers.WatchedFileHandler does the same by checking the file at every record).
    """

    def _open(self) -> TextIO:
        return open_log_file(self.baseFilename)

    def reopen(self) -> None:
        """Raises LogFileError (the old file is kept) if the path cannot be opened."""
        old = self.setStream(self._open())
        if old is not None:
            old.close()


FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


def setup(log_file: str | None) -> logging.Logger:
    log = logging.getLogger("railcar")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    if log_file:
        handler = SafeFileHandler(log_file)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S %z"))
    log.addHandler(handler)
    return log


def reopen(log: logging.Logger) -> None:
    """Reopen file handlers in place (after logrotate moved the file). If the new file cannot
    be opened the old one is kept, and the reason is logged there."""
    for handler in log.handlers:
        if isinstance(handler, SafeFileHandler):
            try:
                handler.reopen()
            except LogFileError as exc:
                log.error("cannot reopen the log: %s", exc)
