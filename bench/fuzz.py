"""Fuzz railcar's HTTP layer for as long as you like, over a real socket.

    .venv/bin/python bench/fuzz.py --seconds 600

Runs the checks of tests/http/fuzz.py (the same generators and rules as the bounded CI test,
tests/test_fuzz_http.py) against a fresh `railcar start` with one worker, batch after batch
of hypothesis examples until the time is up. An input that breaks a rule is shrunk by
hypothesis and saved as tests/http/cases/fuzz_<hash>.http with `# expect: review`; decide
the outcome the server must give, put it in place of `review`, and fix the server: the case
then runs in the parser tests and over the wire from then on. Exit status 1 if anything was
found.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.http.fuzz import (FuzzFailure, Target, cuts_strategy,  # noqa: E402
                             requests_strategy, save_case)


def fuzz_batch(target, examples, found):
    """One hypothesis run of `examples` inputs; the last failing input goes to `found`."""
    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(data=requests_strategy(), cuts=cuts_strategy())
    def one(data, cuts):
        try:
            target.check(data, cuts)
        except FuzzFailure as failure:
            found[:] = [data, str(failure)]
            raise

    one()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=300, help="how long to fuzz")
    parser.add_argument("--batch", type=int, default=500, help="examples per hypothesis run")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.seconds
    target = Target()
    batches = saved = 0
    try:
        while time.monotonic() < deadline:
            found: list = []
            try:
                fuzz_batch(target, args.batch, found)
            except FuzzFailure:
                path = save_case(found[0], found[1])
                saved += 1
                print(f"found: {found[1].splitlines()[0]}\n  saved as {path}", flush=True)
                target.close()  # the worker may be gone: start over with a fresh server
                target = Target()
            batches += 1
            print(f"{batches} batches of {args.batch}, {saved} failing inputs saved",
                  flush=True)
    finally:
        target.close()
    return 1 if saved else 0


if __name__ == "__main__":
    sys.exit(main())
