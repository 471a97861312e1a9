"""Parsing of wrk's report and the benchmark's summaries: `python -m pytest bench`."""

import pytest

import run
import servers
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


TAIL = CLEAN.replace("Transfer/sec:      1.15MB\n", """Transfer/sec:      1.15MB
Latency max: 244361 us
Over 30250 us: 1234 requests
""")


def test_command_matches_the_documented_default():
    assert wrk.command("wrk", "http://127.0.0.1:1/", 2, 50, 8) == [
        "wrk", "-t2", "-c50", "-d8s", "--latency", "-s", str(wrk.TAIL_SCRIPT),
        "http://127.0.0.1:1/"]
    assert wrk.command("wrk", "URL", 2, 50, 8, script=None)[-2:] == ["--latency", "URL"]
    assert wrk.command("wrk", "URL", 2, 50, 8, script=None, timeout=5)[-3:] == [
        "--latency", "--timeout=5s", "URL"]
    assert wrk.TAIL_SCRIPT.is_file()


def test_max_latency_from_the_thread_stats_without_the_script():
    assert wrk.parse(CLEAN).max_ms == pytest.approx(244.36)
    assert wrk.parse(WITH_ERRORS).max_ms == pytest.approx(2000)
    assert wrk.parse(CLEAN).over_count is None


def test_exact_max_and_the_count_over_a_threshold_from_the_script():
    result = wrk.parse(TAIL)
    assert result.max_ms == pytest.approx(244.361)
    assert result.over_ms == pytest.approx(30.25)
    assert result.over_count == 1234
    assert run.over_text(result) == "1234" and run.over_text(wrk.parse(CLEAN)) == "-"


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
    assert line.startswith("hello: railcar 7,639 req/s (p50 0.95 ms, p99 1.20 s, -) [errors] | ")
    assert line.endswith("| ratio gunicorn-gevent 1.00x")


def test_pss_median_and_ratio_per_peer():
    rounds = [_round("railcar", n, CLEAN) for n in (1, 2, 3)] + \
        [_round("granian", n, CLEAN) for n in (1, 2, 3)]
    for round_, pss in zip(rounds, [50e6, 70e6, 60e6, 80e6, 100e6, 90e6]):
        round_.pss = int(pss)
    railcar, granian = run.summarize(rounds, "hello", ["railcar", "granian"])
    assert railcar.median("pss", "round") == 60e6 and granian.median("pss", "round") == 90e6
    args = run.parse_args(["--apps", "hello"])
    lines = run.report_app("hello", [railcar, granian], args)
    assert lines[0].startswith("hello (wrk -c50): median of 3 rounds")
    assert "  railcar / granian: req/s 1.00x (higher is better), p99 1.00x, PSS 0.67x " \
        "(lower is better)" in lines
    assert "60 MB" in lines[2] and "90 MB" in lines[3]
    assert run.one_line("hello", [railcar, granian]).endswith(
        "p99 1.20 s, 90 MB) | ratio granian 1.00x")


def test_io20_reports_the_fraction_of_its_ceiling():
    args = run.parse_args(["--apps", "io20"])
    round_ = run.Round(app="io20", server="railcar", number=1, result=wrk.parse(CLEAN))
    lines = run.report_app("io20", run.summarize([round_], "io20", ["railcar"]), args)
    assert "ceiling 200 / 0.02 s = 10,000 req/s" in lines[0]
    assert lines[2].endswith("0 = 76.4% of the ceiling")


def _restart_round(server, number, control_max, restart_max, over, errors=""):
    control = wrk.parse(CLEAN.replace("244.36ms", f"{control_max}ms"))
    during = wrk.parse(TAIL.replace("244361", str(int(restart_max * 1000)))
                       .replace("1234", str(over)) + errors)
    return run.Round(app="restart", server=server, number=number, control=control,
                     result=during, restart=servers.RestartOutcome(True, 1.5, "done"))


def test_restart_rounds_report_worst_requests_and_their_difference():
    rounds = [_restart_round("railcar", 1, 30, 35, 3), _restart_round("railcar", 2, 32, 80, 40),
              _restart_round("railcar", 3, 31, 39, 5),
              _restart_round("gunicorn-gevent", 1, 170, 900, 500,
                             "  Socket errors: connect 0, read 7, write 0, timeout 0\n")]
    rounds.append(run.Round(app="restart", server="waitress", number=1,
                            unsupported="waitress has no graceful restart"))
    assert rounds[0].worst_increase_ms == pytest.approx(5)
    assert rounds[0].ok and not rounds[3].ok and rounds[4].ok
    railcar, gunicorn, waitress = run.summarize(rounds, "restart",
                                                ["railcar", "gunicorn-gevent", "waitress"])
    assert railcar.median("max_ms", "control") == 31
    assert railcar.median("max_ms") == 39
    assert railcar.median("worst_increase_ms", "round") == pytest.approx(8)
    assert railcar.spread("worst_increase_ms", "round") == pytest.approx((5, 48))
    assert railcar.median("over_count") == 5
    lines = run.report_restart([railcar, gunicorn, waitress], run.parse_args([]))
    assert "target: worst during the restart at most the control's + 10 ms" in lines[0]
    assert lines[2].split()[:5] == ["railcar", "31.0", "ms", "39.0", "ms"]
    assert lines[2].endswith("0  target met")
    assert "ERRORS during restart read 7" in lines[3] and "target" not in lines[3]
    assert lines[4] == "  waitress          not supported (waitress has no graceful restart)"
    assert "  railcar / gunicorn-gevent: worst during the restart 0.04x (lower is better)" \
        in lines
    assert lines[-1] == ("restart: worst request control -> during restart: railcar 31.0 ms -> "
                         "39.0 ms (+8.0 ms) | gunicorn-gevent 170 ms -> 900 ms (+730 ms) "
                         "[errors] | waitress not supported")


def test_a_failed_restart_fails_the_round():
    round_ = _restart_round("railcar", 1, 30, 35, 0)
    round_.restart = servers.RestartOutcome(False, 10.0, "railcar restart exited 1: boom")
    assert not round_.ok
    summary = run.Summary("railcar", [round_])
    assert run.errors_text(summary) == "1 restart(s) FAILED"


def test_connections_per_app_and_the_override():
    args = run.parse_args([])
    assert args.apps == ["hello", "flask", "io20", "restart"]
    assert args.peers == ["granian", "uwsgi", "gunicorn-gevent"]
    assert [run.connections(args, a) for a in args.apps] == [50, 50, 200, 50]
    args = run.parse_args(["--connections", "64"])
    assert {run.connections(args, a) for a in args.apps} == {64}
    with pytest.raises(SystemExit):
        run.parse_args(["--restart-window", "2", "--restart-at", "2"])


def test_formats():
    assert run.fmt_ms(0.954) == "0.95 ms"
    assert run.fmt_ms(9.81) == "9.8 ms"
    assert run.fmt_ms(260.3) == "260 ms"
    assert run.fmt_ms(1080) == "1.08 s"
    assert run.fmt_delta(4.21) == "+4.2 ms" and run.fmt_delta(-0.5) == "-0.50 ms"
    assert run.fmt_mb(57_400_000) == "57 MB" and run.fmt_mb(None) == "-"
    assert run.ratio(12345, 11000) == "1.12x"
    assert run.ratio(None, 11000) == "-"
