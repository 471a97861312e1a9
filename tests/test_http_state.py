"""http/state.py: the counters and flags a server owns and its connections update, in-process
(no sockets): the connection cap's `room`, the end of a retire, the status and latency counts
and the stats the master reads."""

from railcar.http.state import LATENCY_BUCKETS, ServerState


class Conn:
    """Stands for a connection: the state only keeps it as a key."""


def test_room_clears_at_the_cap_and_returns_when_one_closes():
    state = ServerState(max_connections=2)
    first, second = Conn(), Conn()
    state.opened(first)
    assert state.room.is_set()
    state.opened(second)
    assert not state.room.is_set()
    assert list(state.connections) == [first, second]  # oldest first
    state.closed(first)
    assert state.room.is_set() and list(state.connections) == [second]


def test_all_closed_only_when_retiring_and_the_last_one_ends():
    state = ServerState(max_connections=10)
    conn = Conn()
    state.opened(conn)
    state.closed(conn)
    assert not state.all_closed.is_set()  # not retiring: nothing to wait for
    other = Conn()
    state.opened(other)
    state.retiring = True
    state.closed(Conn())  # one it never counted: harmless
    assert not state.all_closed.is_set()
    state.closed(other)
    assert state.all_closed.is_set()
    state.closed(other)  # a second call changes nothing
    assert state.stats()["connections"] == 0


def test_answered_counts_status_class_and_latency_bucket():
    state = ServerState(max_connections=10)
    state.answered(200, LATENCY_BUCKETS[0])  # at the bound: that bucket
    state.answered(404, LATENCY_BUCKETS[0] + 1e-6)  # just over: the next one
    state.answered(503, LATENCY_BUCKETS[-1] + 1)  # past the last bound: +Inf
    state.refused(400)
    stats = state.stats()
    assert stats["status_counts"] == {"1xx": 0, "2xx": 1, "3xx": 0, "4xx": 2, "5xx": 1}
    counts = stats["latency"]["counts"]
    assert len(counts) == len(LATENCY_BUCKETS) + 1 and sum(counts) == 3
    assert counts[0] == 1 and counts[1] == 1 and counts[-1] == 1
    assert abs(stats["latency"]["sum"] - (2 * LATENCY_BUCKETS[0] + 1e-6
                                          + LATENCY_BUCKETS[-1] + 1)) < 1e-9
    assert stats["latency"]["buckets"] == list(LATENCY_BUCKETS)


def test_max_in_flight_zero_means_no_limit():
    assert ServerState(10).max_in_flight > 10 ** 9
    assert ServerState(10, max_in_flight=5).max_in_flight == 5
