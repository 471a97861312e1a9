"""Prometheus metrics, served by the master at http://METRICS_BIND/metrics (off by default).

Runs in the master. Nothing is measured at scrape time: the collector reads each pool's
snapshot (pool.snapshot()), which holds what the pool sampled in the last tick (workers'
counters from their `stats` replies, RSS and CPU from psutil), so a scrape never waits on a worker and workers never run prometheus-client.
Counters are the pools' sums over past and present workers, so they only grow.
"""

from __future__ import annotations

import gevent.socket as socket
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                    HistogramMetricFamily)

from . import canary as canary_states
from . import states
from .responder import Responder, plain

WORKER_STATES = (states.BOOTING, states.READY, states.RETIRING)


class RailcarCollector:
    def __init__(self, master):
        self.master = master

    def collect(self):
        requests = CounterMetricFamily("railcar_requests", "Requests answered, by status class.",
                                       labels=["app", "status"])
        overloaded = CounterMetricFamily(
            "railcar_overloaded_requests", "Requests answered 503 over max_concurrent_requests.",
            labels=["app"])
        timed_out = CounterMetricFamily(
            "railcar_timed_out_requests", "Requests cut off at max_request_time.", labels=["app"])
        latency = HistogramMetricFamily("railcar_request_duration_seconds",
                                        "Time from calling the app to the end of its response.",
                                        labels=["app"])
        queue = HistogramMetricFamily(
            "railcar_request_queue_seconds",
            "Time from the web server taking a request (X-Request-Start) to the worker "
            "calling the app.", labels=["app"])
        in_flight = GaugeMetricFamily("railcar_requests_in_flight", "Requests being served.",
                                      labels=["app"])
        workers = GaugeMetricFamily("railcar_workers", "Worker processes by state.",
                                    labels=["app", "state"])
        restarts = CounterMetricFamily("railcar_restarts", "Rolling restarts, by outcome.",
                                       labels=["app", "outcome"])
        replaced = CounterMetricFamily("railcar_worker_replacements",
                                       "Workers replaced for going over a limit.",
                                       labels=["app", "limit"])
        canary_active = GaugeMetricFamily(
            "railcar_canary_active", "1 while a canary of a rolling restart is watched.",
            labels=["app"])
        canary_requests = GaugeMetricFamily(
            "railcar_canary_requests", "Requests the current or last canary answered.",
            labels=["app"])
        canary_errors = GaugeMetricFamily(
            "railcar_canary_errors", "5xx responses of the current or last canary.",
            labels=["app"])
        canaries = CounterMetricFamily("railcar_canaries", "Canary verdicts, by outcome.",
                                       labels=["app", "outcome"])
        health_failures = CounterMetricFamily(
            "railcar_health_check_failures", "New workers that failed their health check.",
            labels=["app"])
        long_lived = GaugeMetricFamily(
            "railcar_worker_long_lived_connections",
            "Open WebSockets and streaming responses of each worker.", labels=["app", "pid"])
        evicted = CounterMetricFamily(
            "railcar_worker_evicted_connections",
            "Idle connections each worker closed at worker_connections to make room for a "
            "new one (the longest-idle first).", labels=["app", "pid"])
        rss = GaugeMetricFamily("railcar_worker_rss_bytes", "Resident memory of each worker.",
                                labels=["app", "pid"])
        uss = GaugeMetricFamily("railcar_worker_uss_bytes",
                                "Memory each worker alone holds (USS): what memory_limit "
                                "measures.", labels=["app", "pid"])
        cpu = GaugeMetricFamily("railcar_worker_cpu_percent",
                                "CPU use of each worker over the last second.",
                                labels=["app", "pid"])
        for view in (pool.snapshot() for pool in self.master.pools):
            app, totals = view.name, view.totals
            for status, count in sorted(totals.status.items()):
                requests.add_metric([app, status], count)
            overloaded.add_metric([app], totals.overloaded)
            timed_out.add_metric([app], totals.timed_out)
            for family, histogram in ((latency, totals.latency), (queue, totals.queue)):
                if histogram.buckets:
                    family.add_metric([app], histogram.cumulative(), histogram.sum)
            sampled = [w for w in view.workers if w.sampled]
            in_flight.add_metric([app], sum(w.counters.get("in_flight", 0) for w in sampled
                                            if w.state in WORKER_STATES))
            for state in WORKER_STATES:
                workers.add_metric([app, state], sum(w.state == state for w in view.workers))
            for outcome in ("ok", "failed"):
                restarts.add_metric([app, outcome], view.restarts.get(outcome, 0))
            for limit, count in sorted(view.replacements.items()):
                replaced.add_metric([app, limit], count)
            canary = view.canary
            canary_active.add_metric([app], int(canary is not None
                                                and canary["state"] == canary_states.WATCHING))
            canary_requests.add_metric([app], canary["requests"] if canary else 0)
            canary_errors.add_metric([app], canary["errors"] if canary else 0)
            for outcome in (canary_states.PASSED, canary_states.FAILED):
                canaries.add_metric([app, outcome], view.canaries.get(outcome, 0))
            health_failures.add_metric([app], view.health_failures)
            for worker in sampled:
                if worker.state in WORKER_STATES:
                    long_lived.add_metric([app, str(worker.pid)],
                                          worker.counters.get("long_lived", 0))
                    evicted.add_metric([app, str(worker.pid)],
                                       worker.counters.get("evicted", 0))
                if worker.rss is not None:
                    rss.add_metric([app, str(worker.pid)], worker.rss)
                if worker.uss is not None:
                    uss.add_metric([app, str(worker.pid)], worker.uss)
                if worker.cpu is not None:
                    cpu.add_metric([app, str(worker.pid)], worker.cpu)
        return [requests, overloaded, timed_out, latency, queue, in_flight, workers, restarts,
                replaced, canary_active, canary_requests, canary_errors, canaries,
                health_failures, long_lived, evicted, rss, uss, cpu]


class MetricsServer:
    """`GET /metrics` on `bind` (HOST:PORT), answered by the master itself with the workers'
    HTTP code, bounded in connections and time like every listener of its own
    (railcar.responder)."""

    def __init__(self, bind: str, master, log):
        host, _, port = bind.rpartition(":")
        self.address = (host.strip("[]") or "0.0.0.0", int(port))
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(RailcarCollector(master))
        self.responder = Responder("metrics", self.answer, log)
        self.listener = None
        self.log = log

    def answer(self, environ, start_response):
        """The WSGI app: the metrics on GET (or HEAD) of /metrics or /."""
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return plain(start_response, "405 Method Not Allowed", b"GET /metrics\n",
                         headers=(("Allow", "GET, HEAD"),))
        if environ["PATH_INFO"] not in ("/metrics", "/"):
            return plain(start_response, "404 Not Found", b"see /metrics\n")
        return plain(start_response, "200 OK", generate_latest(self.registry),
                     CONTENT_TYPE_LATEST)

    def start(self) -> None:
        """Raises RuntimeError (which the launcher reports) if the address cannot be bound."""
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        try:
            self.listener = socket.create_server(self.address, family=family)
        except OSError as exc:
            raise RuntimeError(f"cannot serve metrics on {self.address[0]}:{self.address[1]}: "
                               f"{exc.strerror or exc}") from None
        self.responder.start([self.listener])
        self.log.info("metrics on http://%s:%d/metrics", *self.address)

    def stop(self) -> None:
        self.responder.stop(close_connections=True)
        if self.listener is not None:
            self.listener.close()
