"""The server log: master messages and every worker's output, to a file or stderr.

Runs in the master. USR1 reopens the file (logrotate's `postrotate` sends it).
"""

from __future__ import annotations

import logging
import sys

FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"


def setup(log_file: str | None) -> logging.Logger:
    log = logging.getLogger("railcar")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S %z"))
    log.addHandler(handler)
    return log


def reopen(log: logging.Logger) -> None:
    """Reopen file handlers in place (after logrotate moved the file)."""
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                handler.close()
                handler.stream = handler._open()
            finally:
                handler.release()
