"""``echo``: an RPC service for smoke tests and benchmarks, a nova `Service` like the others.

``supervise --workers 4 [--topic T] echo`` serves, on topic ``echo`` (or T: echo honours
``--topic``): ``echo(payload)``, ``sleep(ms)``, ``burn(n)`` (n rounds of CPU work) and
``pid()`` (the worker's process id), plus the ``baseapi`` namespace's ``ping(arg)``. It has
a record in the services table (binary ``echo``) and heartbeats, straight to the database.
"""

from __future__ import annotations

from typing import Any

from supervise.hosted import WorkerContext
from supervise.manager import Manager
from supervise.service import Service
from supervise.services.echo_endpoint import TOPIC, EchoEndpoint

BINARY = TOPIC


class EchoManager(Manager):
    """No RPC methods of its own: the Service serves its `EchoEndpoint`."""

    def __init__(self, host: str | None = None, **kwargs: Any):
        super().__init__(host=host, service_name=BINARY, **kwargs)
        self.additional_endpoints.append(EchoEndpoint())


def EchoService(context: WorkerContext) -> Service:  # the name the `echo` entry point has
    return Service.create(
        binary=BINARY,
        topic=context.conf.topic or TOPIC,
        manager=EchoManager,
        conf=context.conf,
        worker_id=context.worker_id,
        cancel=context.cancel,
    )
