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


class LogFileError(RuntimeError):
    """The log file cannot be opened; the message names it and says why."""


class SafeFileHandler(logging.FileHandler):
    """A FileHandler whose file is opened with O_NOFOLLOW (a symlink is refused)."""

    def _open(self):
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.baseFilename, flags, 0o640)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise LogFileError(f"log file {self.baseFilename} is a symlink: railcar does "
                                   "not follow one there (point log_file at the real file)"
                                   ) from None
            raise LogFileError(f"cannot open the log file {self.baseFilename}: "
                               f"{exc.strerror}") from None
        return open(fd, "a", encoding=self.encoding)

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


def setup(log_file: str | None) -> logging.Logger:
    log = logging.getLogger("railcar")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    if log_file:
        handler = SafeFileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S %z"))
    log.addHandler(handler)
    return log


def reopen(log: logging.Logger) -> None:
    """Reopen file handlers in place (after logrotate moved the file). If the new file cannot
    be opened the old one is kept, and the reason is logged there."""
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                try:
                    stream = handler._open()
                except LogFileError as exc:
                    log.error("cannot reopen the log: %s", exc)
                    continue
                old, handler.stream = handler.stream, stream
                if old is not None:
                    old.close()
            finally:
                handler.release()
