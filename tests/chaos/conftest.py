"""The chaos suite runs real masters under load and faults, with the functional suite's
fixtures (a master as a subprocess, a RabbitMQ vhost or a local queue file, a client)."""

from tests.functional.conftest import (  # noqa: F401 (fixtures)
    client,
    messenger,
    rabbit_url,
    serve,
    supervise,
    topic,
    transport_url,
)
