"""A message that kills whichever worker takes it, under a call load: it is dead-lettered
after ``max_redeliveries``, its caller is told, and the master (default crash budget) serves
on. Known limit: a call that was in flight beside the poison each time it killed a worker
counts those redeliveries too, and may be dead-lettered with it (its caller is told so);
none is lost or left unanswered."""

from __future__ import annotations

import pytest

from supervise.rpc import wire
from tests.functional.conftest import each_transport
from tests.functional.load import Load

MAX_REDELIVERIES = 3  # the default


@each_transport
@pytest.mark.parametrize(("method", "args"), [("die", {}), ("exit", {"status": 0})])
def test_a_message_that_kills_its_worker_is_dead_lettered(serve, client, method, args):
    sup = serve(2)
    with Load(client, callers=4).running() as load:
        load.wait_for_calls(20)
        with pytest.raises(wire.RemoteError) as error:
            client.prepare(timeout=60).call({}, method, **args)
        load.wait_for_calls(20)
    log = sup.log()
    deaths = log.count("killed by signal 9") + log.count("exited with status 0")
    master = sup.process.poll()
    dead_lettered = [f for f in load.failures if "DeadLettered" in f]
    print(
        f"\n{method}: sent {load.succeeded + len(load.failures) + 1}, "
        f"answered {load.succeeded} (+1 DeadLettered), collateral DeadLettered "
        f"{len(dead_lettered)}, lost 0 (no timeout), worker deaths {deaths}, "
        f"master exit {master} (None: still running)"
    )
    assert error.value.exc_type == "DeadLettered"
    assert "moving it to queue supervise_dead_letter" in log
    assert deaths == 1 + MAX_REDELIVERIES, deaths
    assert load.failures == dead_lettered, load.failures[:5]
    assert master is None and client.call({}, "echo", payload=1) == 1
    assert "crash loop" not in log.lower()
