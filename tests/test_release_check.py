"""release.check_python: a passed check of an interpreter is remembered with the files it
found, and runs again once one of them changed or went away."""

import os
import sys

import pytest

from railcar import release


@pytest.fixture
def interpreter(tmp_path, monkeypatch):
    """An executable that runs this Python with a directory of our own first on its path,
    holding a module named like one a worker needs (httptools), and the count of checks run."""
    shadow = tmp_path / "shadow"
    (shadow / "httptools").mkdir(parents=True)
    (shadow / "httptools" / "__init__.py").write_text("# stands in for httptools\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={shadow} exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    runs = []
    real = release._run_as_app

    def counting(argv, *args, **kwargs):
        runs.append(argv[0])
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(release, "_run_as_app", counting)
    monkeypatch.setattr(release, "_passed", {})
    return str(wrapper), shadow / "httptools" / "__init__.py", runs


def test_a_passed_check_is_not_run_again_while_its_files_are_unchanged(interpreter):
    python, module, runs = interpreter
    release.check_python(python)
    release.check_python(python)
    assert runs == [python]


def test_a_changed_or_removed_module_is_checked_again(interpreter):
    python, module, runs = interpreter
    release.check_python(python)
    module.write_text("# stands in for httptools, upgraded\n")
    release.check_python(python)
    assert len(runs) == 2
    os.remove(module)
    os.rmdir(module.parent)
    release.check_python(python)   # the real httptools now
    assert len(runs) == 3
    release.check_python(python)
    assert len(runs) == 3


def test_a_failed_check_is_not_remembered(interpreter, tmp_path):
    python, module, runs = interpreter
    module.write_text("raise ImportError('broken')\n")   # found, so it passes find_spec
    bare = tmp_path / "bare"
    bare.write_text(f'#!/bin/sh\nexec {sys.executable} -S -I "$@"\n')   # no site-packages
    bare.chmod(0o755)
    for _ in range(2):
        with pytest.raises(release.ReleaseError, match="cannot import"):
            release.check_python(str(bare))
    assert runs == [str(bare), str(bare)]
