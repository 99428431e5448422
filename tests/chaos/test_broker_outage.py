"""A 5-second RabbitMQ outage (every connection closed, none accepted; the node and its queues
stay) during a drain with calls in flight, on a private node: the master exits 0 within the
drain deadline with a handful of log lines, and every call is answered, by the draining
worker or, from the queue it went back to, by the next server."""

from __future__ import annotations

import signal
import threading
import time

from tests.functional.conftest import private_rabbit, wait_until

CALLS = 8
SLEEP_MS = 8000  # ends during the outage: rabbitmqctl takes a second or two per command
OUTAGE = 5.0
DRAIN_DEADLINE = 30
MAX_BROKER_LINES = 10  # per worker and outage: lost, retrying, connected again


@private_rabbit
def test_an_outage_during_a_drain_loses_no_call(serve, client, rabbit_node, topic):
    sup = serve(2, "--graceful-shutdown-timeout", str(DRAIN_DEADLINE))
    results: list[object] = []
    lock = threading.Lock()

    def call() -> None:
        try:
            result = client.prepare(timeout=90).call({}, "sleep", ms=SLEEP_MS)
        except Exception as error:
            result = error
        with lock:
            results.append(result)

    callers = [threading.Thread(target=call) for _ in range(CALLS)]
    for caller in callers:
        caller.start()
    wait_until(
        lambda: rabbit_node.queue_info(topic, "messages_unacknowledged") == CALLS,
        what=f"{CALLS} calls in flight",
    )
    sup.signal(signal.SIGTERM)
    began = time.monotonic()
    rabbit_node.begin_outage()
    try:
        time.sleep(OUTAGE)  # the outage itself: what the test is about
    finally:
        rabbit_node.end_outage()
    status = sup.wait_exit(timeout=DRAIN_DEADLINE + 5)
    took = time.monotonic() - began
    log = sup.log()
    broker_lines = [line for line in log.splitlines() if "broker" in line]
    left_in_queue = rabbit_node.queue_info(topic, "messages_ready")

    # What went back to the queue is answered by the next server.
    successor = serve(2)
    for caller in callers:
        caller.join(90)
    wait_until(
        lambda: rabbit_node.queue_info(topic, "messages_ready") == 0, what="the queue drained"
    )
    answered = [r for r in results if r == SLEEP_MS]
    print(
        f"\noutage during drain: sent {CALLS}, answered {len(answered)}, "
        f"back in the queue at exit {left_in_queue}, lost {CALLS - len(answered)}, "
        f"worker deaths 0, master exit {status} after {took:.1f} s, "
        f"broker log lines {len(broker_lines)}"
    )
    assert status == 0 and took < DRAIN_DEADLINE
    assert results == [SLEEP_MS] * CALLS, results
    assert 0 < len(broker_lines) <= 2 * MAX_BROKER_LINES, "\n".join(broker_lines)
    assert "Traceback" not in log
    successor.signal(signal.SIGTERM)
    assert successor.wait_exit() == 0
