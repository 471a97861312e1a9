"""Parsing of wrk's report and the benchmark's summaries: `python -m pytest bench`."""

import pytest

import run
import wrk

CLEAN = """\
Running 8s test @ http://127.0.0.1:18111/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    17.05ms   23.17ms 244.36ms   86.72%
    Req/Sec     3.85k     1.31k    6.92k    65.00%
  Latency Distribution
     50%  950.00us
     75%   27.40ms
     90%   46.40ms
     99%    1.20s
  15394 requests in 8.02s, 2.32MB read
Requests/sec:   7639.04
Transfer/sec:      1.15MB
"""

WITH_ERRORS = """\
Running 8s test @ http://127.0.0.1:18111/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.02s   500.10ms   2.00s    60.00%
    Req/Sec    30.12     20.00   100.00     70.00%
  Latency Distribution
     50%    1.01s
     75%    1.50s
     90%    1.90s
     99%    2.00s
  480 requests in 8.10s, 60.00KB read
  Socket errors: connect 0, read 12, write 0, timeout 55
  Non-2xx or 3xx responses: 7
Requests/sec:     59.26
Transfer/sec:      7.41KB
"""


def test_clean_report():
    result = wrk.parse(CLEAN)
    assert result.requests_per_sec == 7639.04
    assert result.requests == 15394
    assert result.duration_ms == pytest.approx(8020)
    assert result.latency_avg_ms == pytest.approx(17.05)
    assert result.p50_ms == pytest.approx(0.95)
    assert result.percentiles_ms["90"] == pytest.approx(46.4)
    assert result.p99_ms == pytest.approx(1200)
    assert result.errors == 0
    assert result.error_summary() == ""


def test_errors_are_counted():
    result = wrk.parse(WITH_ERRORS)
    assert result.socket_errors == {"connect": 0, "read": 12, "write": 0, "timeout": 55}
    assert result.non_2xx_3xx == 7
    assert result.errors == 74
    assert result.error_summary() == "read 12, timeout 55, non-2xx/3xx 7"


def test_output_without_result_is_an_error():
    with pytest.raises(wrk.WrkError):
        wrk.parse("unable to connect to 127.0.0.1:18112 Connection refused\n")


def test_command_matches_the_documented_default():
    assert wrk.command("wrk", "http://127.0.0.1:1/", 2, 64, 8) == [
        "wrk", "-t2", "-c64", "-d8s", "--latency", "http://127.0.0.1:1/"]


def _round(server, number, text):
    return run.Round(app="hello", server=server, number=number, result=wrk.parse(text))


def test_summary_takes_medians_and_reports_errors():
    rounds = [_round("railcar", 1, CLEAN), _round("gunicorn-gevent", 1, CLEAN),
              _round("railcar", 2, WITH_ERRORS), _round("gunicorn-gevent", 2, CLEAN),
              _round("railcar", 3, CLEAN), _round("gunicorn-gevent", 3, CLEAN)]
    railcar, gunicorn = run.summarize(rounds, "hello", ["railcar", "gunicorn-gevent"])
    assert railcar.median("requests_per_sec") == 7639.04
    assert railcar.spread() == (59.26, 7639.04)
    assert railcar.errors == 74 and gunicorn.errors == 0
    line = run.one_line("hello", [railcar, gunicorn])
    assert line.startswith("hello: railcar 7,639 req/s (p50 0.95 ms, p99 1.20 s) [errors] | ")
    assert line.endswith("| ratio 1.00x")


def test_formats():
    assert run.fmt_ms(0.954) == "0.95 ms"
    assert run.fmt_ms(9.81) == "9.8 ms"
    assert run.fmt_ms(260.3) == "260 ms"
    assert run.fmt_ms(1080) == "1.08 s"
    assert run.ratio(12345, 11000) == "1.12x"
    assert run.ratio(None, 11000) == "-"
