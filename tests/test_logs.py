"""The server log's file handler (railcar.logs.SafeFileHandler): stdlib FileHandler with
O_NOFOLLOW opens, reopened in place after logrotate moved the file."""

from __future__ import annotations

import logging
import os

import pytest

from railcar import logs


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("railcar", logging.INFO, __file__, 1, message, None, None)


def test_reopen_writes_to_a_new_file_at_the_path_and_close_closes_it(tmp_path):
    path = tmp_path / "railcar.log"
    handler = logs.SafeFileHandler(str(path))
    handler.emit(record("one"))
    os.rename(path, tmp_path / "railcar.log.1")     # logrotate
    handler.emit(record("two"))                     # still the moved file
    handler.reopen()
    handler.emit(record("three"))
    stream = handler.stream
    handler.close()
    assert stream.closed and handler.stream is None
    assert (tmp_path / "railcar.log.1").read_text() == "one\ntwo\n"
    assert path.read_text() == "three\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o640 & ~current_umask())


def test_a_symlink_at_the_path_is_never_followed(tmp_path):
    target = tmp_path / "target"
    target.write_text("")
    link = tmp_path / "railcar.log"
    link.symlink_to(target)
    with pytest.raises(logs.LogFileError, match="is a symlink"):
        logs.SafeFileHandler(str(link))
    handler = logs.SafeFileHandler(str(tmp_path / "real.log"))
    os.replace(link, tmp_path / "real.log")          # planted after the start
    with pytest.raises(logs.LogFileError, match="is a symlink"):
        handler.reopen()
    handler.emit(record("kept"))                     # the old file is kept
    handler.close()
    assert target.read_text() == ""


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
