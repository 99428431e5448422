"""A stock oslo.messaging transport for the tests' clients and servers, on a private
``ConfigOpts`` (never the global ``cfg.CONF``); oslo's RPC dispatcher still registers its own
few options on ``cfg.CONF``, which we cannot prevent. A plugin of every test session
(tests/conftest.py): oslo is imported only by a test that uses the fixture."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


def oslo_conf() -> Any:
    """A private oslo.config for oslo.messaging's transports."""
    from oslo_config import cfg
    from oslo_messaging._metrics import client as oslo_metrics
    from oslo_messaging._tracing import client as oslo_tracing

    conf = cfg.ConfigOpts()
    # oslo.messaging 18 registers its tracing and metrics options on the global cfg.CONF
    # only, yet reads them from the transport's conf (as its own ConfFixture knows).
    conf.register_opts(oslo_tracing.oslo_messaging_tracing, group="oslo_messaging_tracing")
    conf.register_opts(oslo_metrics.oslo_messaging_metrics, group="oslo_messaging_metrics")
    conf(args=[], project="supervise-oslo-interop", default_config_files=[])
    return conf


@pytest.fixture
def oslo_transport(rabbit_url: str) -> Iterator[Any]:
    """An oslo.messaging RPC transport on the test session's vhost, on a private conf."""
    import oslo_messaging

    transport = oslo_messaging.get_rpc_transport(oslo_conf(), url=rabbit_url)
    try:
        yield transport
    finally:
        transport.cleanup()
