"""The master's totals, added from its workers' cumulative counters, and their exposition."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from supervise import config, hosted
from supervise.master import ExitCause, Master
from supervise.metrics import Metrics
from supervise.metrics_endpoint import Endpoint
from supervise.progress import LATENCY_BUCKETS, MAX_METHODS, OTHER_METHODS, Progress, Tracker
from supervise.systemd import Notifier


def heartbeat(tracker: Tracker) -> Progress:
    """What the master reads from a worker's heartbeat: its snapshot, through JSON."""
    return Progress.from_json(json.loads(json.dumps(tracker.snapshot(consuming=True).to_json())))


def handle(tracker: Tracker, method: str, count: int, failed: bool = False) -> None:
    for _ in range(count):
        tracker.end(tracker.begin(method), method, failed)


def test_each_heartbeat_adds_what_the_worker_did_since_the_one_before() -> None:
    metrics, tracker = Metrics(), Tracker(pool_size=2)
    handle(tracker, "ping", 3)
    handle(tracker, "ping", 1, failed=True)
    tracker.redelivered()
    first = heartbeat(tracker)
    metrics.add_progress(None, first)  # its first heartbeat counts from zero
    handle(tracker, "ping", 2)
    handle(tracker, "pong", 1)
    tracker.dead_lettered()
    second = heartbeat(tracker)
    metrics.add_progress(first, second)
    metrics.add_progress(second, second)  # a heartbeat with nothing new adds nothing
    assert (metrics.methods["ping"].handled, metrics.methods["ping"].failed) == (6, 1)
    assert metrics.methods["pong"].handled == 1
    assert sum(metrics.methods["ping"].buckets) == 6
    assert metrics.methods["ping"].sum == pytest.approx(second.methods["ping"].sum)
    assert (metrics.redelivered, metrics.dead_lettered) == (1, 1)


def test_totals_outlive_workers_and_never_go_backwards() -> None:
    metrics = Metrics()
    old, new = Tracker(pool_size=1), Tracker(pool_size=1)
    handle(old, "ping", 5)
    last_of_old = heartbeat(old)
    metrics.add_progress(None, last_of_old)
    handle(new, "ping", 2)  # its replacement counts from zero again
    metrics.add_progress(None, heartbeat(new))
    assert metrics.methods["ping"].handled == 7
    # A worker's counters lower than its previous ones started again: counted as new.
    restarted = Tracker(pool_size=1)
    handle(restarted, "ping", 1)
    metrics.add_progress(last_of_old, heartbeat(restarted))
    assert metrics.methods["ping"].handled == 8


def test_method_names_stay_bounded_across_workers() -> None:
    metrics = Metrics()
    for worker in range(3):  # each within its own bound, more than MAX_METHODS together
        tracker = Tracker(pool_size=1)
        for index in range(MAX_METHODS // 2):
            handle(tracker, f"m{worker}_{index}", 1)
        metrics.add_progress(None, heartbeat(tracker))
    assert len(metrics.methods) == MAX_METHODS + 1
    assert metrics.methods[OTHER_METHODS].handled == 3 * (MAX_METHODS // 2) - MAX_METHODS


def test_cpu_seconds_add_up_per_slot_across_its_workers() -> None:
    metrics = Metrics()
    metrics.add_cpu(0, None, 1.5)
    metrics.add_cpu(0, 1.5, 2.0)
    metrics.add_cpu(0, None, 0.25)  # the slot's next worker
    metrics.add_cpu(1, None, None)  # not sampled: it had exited
    assert metrics.cpu_seconds == {0: 2.25}


@pytest.fixture
def master(tmp_path) -> Iterator[Master]:
    """A real master, never run: the state a scrape reads. Its control socket is in a
    directory of its own."""
    conf = config.load({"workers": 2, "runtime_dir": str(tmp_path / "run")}, [])
    master = Master(conf, hosted.resolve("idle"), lambda: conf, Notifier())
    yield master
    for listener in master.listeners:
        listener.close()


def scrape(endpoint: Endpoint, request: bytes = b"GET /metrics HTTP/1.1\r\nHost: x") -> dict:
    response = endpoint.answer(request, None)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def test_the_exposition_parses_with_prometheus_clients_parser(master: Master) -> None:
    tracker = Tracker(pool_size=1)
    handle(tracker, "ping", 2)
    handle(tracker, "ping", 1, failed=True)
    master.metrics.add_progress(None, heartbeat(tracker))
    master.metrics.count_exit(ExitCause.SIGNAL.value)
    master.metrics.count_reload(completed=True)
    master.metrics.add_cpu(0, None, 0.5)
    samples = scrape(Endpoint(master, master.metrics))
    method = (("method", "ping"),)
    assert samples["supervise_rpc_messages_handled_total", method] == 3
    assert samples["supervise_rpc_messages_failed_total", method] == 1
    assert samples["supervise_rpc_handler_duration_seconds_count", method] == 3
    infinite = (("le", "+Inf"), ("method", "ping"))
    assert samples["supervise_rpc_handler_duration_seconds_bucket", infinite] == 3
    first = (("le", str(LATENCY_BUCKETS[0])), ("method", "ping"))
    assert samples["supervise_rpc_handler_duration_seconds_bucket", first] <= 3
    assert samples["supervise_worker_exits_total", (("cause", "signal"),)] == 1
    assert samples["supervise_worker_exits_total", (("cause", "hung"),)] == 0  # every cause
    assert samples["supervise_reloads_total", (("outcome", "completed"),)] == 1
    assert samples["supervise_reloads_total", (("outcome", "failed"),)] == 0
    assert samples["supervise_worker_cpu_seconds_total", (("slot", "0"),)] == 0.5
    assert samples["supervise_workers_configured", ()] == 0  # never run: no slots yet
    [(info, value)] = [(dict(k), v) for (n, k), v in samples.items() if n == "supervise_build_info"]
    assert info["service"] == "idle" and info["version"] and value == 1


def test_openmetrics_when_the_scraper_asks_for_it(master: Master) -> None:
    request = b"GET / HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0"
    response = Endpoint(master, master.metrics).answer(request, None)
    assert b"Content-Type: application/openmetrics-text" in response
    assert response.endswith(b"# EOF\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /metrics HTTP/1.0", b"405"),
        (b"GET /other HTTP/1.0", b"404"),
        (b"garbage", b"400"),
        (b"GET / HTTP/1.0 extra", b"400"),
        (b"GET /\x00 HTTP/1.0", b"400"),
        (b"\xff\xfe\xfd", b"400"),
        (b"GET / HTTP/1.0\r\nno colon here", b"400"),
        (b"", b"400"),
    ],
)
def test_anything_else_gets_an_error_status(
    master: Master, request_bytes: bytes, status: bytes
) -> None:
    response = Endpoint(master, master.metrics).answer(request_bytes, None)
    assert response.startswith(b"HTTP/1.0 " + status + b" ")
    assert b"Connection: close\r\n" in response


def test_head_gets_the_headers_only(master: Master) -> None:
    response = Endpoint(master, master.metrics).answer(b"HEAD /metrics HTTP/1.0", None)
    assert response.startswith(b"HTTP/1.0 200 OK\r\n") and response.endswith(b"\r\n\r\n")
