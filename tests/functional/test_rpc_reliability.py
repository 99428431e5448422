"""Nothing lost on reload, drain, crash or broker restart, under a steady call load (on both
transports but for the broker restart)."""

from __future__ import annotations

import signal
import time

from supervise.rpc.client import RPCClient
from tests.functional.conftest import each_transport, rabbitmqctl, wait_until
from tests.functional.load import Load


def reload_under_load(sup, client: RPCClient) -> Load:
    """SIGHUP while callers call; return the load once the reload ended and calls went on."""
    with Load(client).running() as load:
        load.wait_for_calls(50)
        sup.signal(signal.SIGHUP)
        wait_until(lambda: len(sup.notify.with_key("READY")) == 2, what="the reload to end")
        load.wait_for_calls(50)
    return load


@each_transport
def test_rolling_reload_under_load_fails_no_call(serve, client):
    sup = serve(2)
    before = sup.worker_pids()
    load = reload_under_load(sup, client)
    assert not load.failures, load.failures[:5]
    assert not sup.worker_pids() & before


@each_transport
def test_mutate_reload_under_load_fails_no_call(serve, client):
    sup = serve(2, "--reload-method", "mutate")
    load = reload_under_load(sup, client)
    assert not load.failures, load.failures[:5]


@each_transport
def test_draining_one_host_under_load_fails_no_call(serve, client):
    """Two hosts serve one topic; one is stopped, as in a rolling restart of a cluster."""
    leaving = serve(2, host="hosta")
    staying = serve(2, host="hostb")
    with Load(client).running() as load:
        load.wait_for_calls(50)
        leaving.signal(signal.SIGTERM)
        assert leaving.wait_exit(timeout=30) == 0
        load.wait_for_calls(50)
    assert not load.failures, load.failures[:5]
    assert staying.process.poll() is None


def test_broker_restart_under_load_workers_reconnect_without_crash_loop(serve, client):
    sup = serve(2)
    pids = sup.worker_pids()
    with Load(client, callers=4).running() as load:
        load.wait_for_calls(20)
        rabbitmqctl("stop_app")
        try:
            time.sleep(1.0)  # an outage of a second, under load
        finally:
            rabbitmqctl("start_app")
        restarted = time.monotonic()
        served_before = load.succeeded
        wait_until(lambda: load.succeeded > served_before + 20, timeout=30, what="service again")
        back_after = time.monotonic() - restarted
    assert back_after < 10, back_after
    assert sup.worker_pids() == pids, "workers were replaced: a crash loop"
    assert sup.log().count("connected again after") >= 2
    assert "Traceback" not in sup.log()
