"""railcar.supervision: limit decisions and counter sums, without processes."""

from railcar.supervision import (MIB, AppCounters, Sample, limit_exceeded, memory_over_at_boot,
                                 request_budget)
from railcar.views import Supervision

POLICY = Supervision(max_requests=100, max_requests_jitter=10, memory_limit=50)


def test_request_budget_has_jitter_within_bounds():
    budgets = {request_budget(POLICY) for _ in range(200)}
    assert min(budgets) >= 100 and max(budgets) <= 110 and len(budgets) > 1
    assert request_budget(Supervision(max_requests=0)) is None


def test_limit_exceeded_names_the_limit():
    sample = Sample(first_seen=0.0, request_budget=105)
    sample.record({"requests": 104, "in_flight": 0}, {"rss": 10 * MIB, "cpu": 1.0}, now=1.0)
    assert limit_exceeded(sample, POLICY, 0, now=1.0) is None
    sample.record({"requests": 105, "in_flight": 0}, {"rss": 10 * MIB, "cpu": 1.0}, now=2.0)
    assert limit_exceeded(sample, POLICY, 0, now=2.0).startswith("max_requests:")
    sample = Sample(first_seen=0.0)
    sample.record({"requests": 1}, {"rss": 51 * MIB, "cpu": 1.0}, now=1.0)
    assert limit_exceeded(sample, POLICY, 0, now=1.0).startswith("memory_limit:")
    sample.record({"requests": 1, "replace": "max_request_time: GET /"}, {}, now=2.0)
    assert limit_exceeded(sample, POLICY, 0, now=2.0) == "max_request_time: GET /"


def test_memory_limit_measures_uss_and_rss_only_without_it():
    sample = Sample(first_seen=0.0)
    sample.record({"requests": 1}, {"rss": 130 * MIB, "uss": 9 * MIB}, now=1.0)
    assert limit_exceeded(sample, POLICY, 0, now=1.0) is None
    sample.record({"requests": 1}, {"rss": 130 * MIB, "uss": 60 * MIB}, now=2.0)
    assert limit_exceeded(sample, POLICY, 0, now=2.0) == "memory_limit: USS 60 MiB is over 50 MiB"
    sample.record({"requests": 1}, {"rss": 60 * MIB, "uss": None}, now=3.0)
    assert limit_exceeded(sample, POLICY, 0, now=3.0) == "memory_limit: RSS 60 MiB is over 50 MiB"


def test_a_worker_over_memory_limit_from_boot_on_is_not_replaced():
    sample = Sample(first_seen=0.0)
    sample.record({"requests": 0}, {"rss": 130 * MIB, "uss": 125 * MIB}, now=1.0)
    assert limit_exceeded(sample, POLICY, 0, now=1.0) is None
    assert memory_over_at_boot(sample, POLICY) == "memory_limit: USS 125 MiB is over 50 MiB"
    sample.record({"requests": 1}, {"rss": 130 * MIB}, now=2.0)
    assert limit_exceeded(sample, POLICY, 0, now=2.0).startswith("memory_limit: USS 125")
    assert memory_over_at_boot(sample, POLICY) is None


def test_a_silent_worker_is_stuck_only_with_max_request_time():
    sample = Sample(first_seen=0.0)
    sample.record({"requests": 1}, {}, now=1.0)
    sample.record(None, {}, now=60.0)
    policy = Supervision()
    assert limit_exceeded(sample, policy, 0, now=60.0) is None
    assert limit_exceeded(sample, policy, 30, now=60.0).startswith("max_request_time: the worker")
    assert limit_exceeded(sample, policy, 30, now=20.0) is None


def test_counters_add_deltas_and_survive_workers():
    counters = AppCounters()
    stats = {"requests": 3, "status_counts": {"2xx": 3},
             "latency": {"buckets": [0.1, 1.0], "counts": [2, 1, 0], "sum": 0.5}}
    counters.add(1, stats)
    counters.add(1, dict(stats, requests=5, status_counts={"2xx": 4, "5xx": 1},
                         latency={"buckets": [0.1, 1.0], "counts": [3, 1, 1], "sum": 2.5}))
    counters.forget(1)
    counters.add(2, {"requests": 1, "status_counts": {"2xx": 1},
                     "latency": {"buckets": [0.1, 1.0], "counts": [1, 0, 0], "sum": 0.01}})
    assert counters.requests == 6
    assert counters.status == {"2xx": 5, "5xx": 1}
    assert counters.latency.counts == [4, 1, 1]
    assert abs(counters.latency.sum - 2.51) < 1e-9
