"""An oslo.service service as oslo's users write one, for the tests that host it unchanged:
its configuration is the global ``cfg.CONF`` (``[DEFAULT] transport_url`` and
``[oslo_test] topic`` of the config file supervise is given), its RPC server a stock
oslo.messaging one. It records its life cycle in the events file (tests/functional/
services.py), with slot and generation -1: an oslo service knows neither."""

from __future__ import annotations

import os
import socket

import oslo_messaging
from oslo_config import cfg
from oslo_messaging.rpc.dispatcher import DefaultRPCAccessPolicy
from oslo_service import backend, service

from tests.functional.services import record

CONF = cfg.CONF
CONF.register_opts(
    [cfg.StrOpt("topic", default="oslo_test"), cfg.StrOpt("greeting", mutable=True)],
    group="oslo_test",
)


def _record(event: str) -> None:
    record(event, -1, -1)


class PidEndpoint:
    target = oslo_messaging.Target(version="1.0")

    def pid(self, ctxt):
        return os.getpid()

    def greeting(self, ctxt):
        return CONF.oslo_test.greeting

    def backend(self, ctxt):
        return backend.get_backend_type().value


class RPCService(service.Service):
    def start(self):
        super().start()
        self.transport = oslo_messaging.get_rpc_transport(CONF)
        target = oslo_messaging.Target(topic=CONF.oslo_test.topic, server=socket.gethostname())
        self.server = oslo_messaging.get_rpc_server(
            self.transport,
            target,
            [PidEndpoint()],
            executor="threading",
            access_policy=DefaultRPCAccessPolicy,
        )
        self.server.start()
        _record("started")

    def stop(self):
        _record("stopping")
        self.server.stop()
        super().stop()

    def wait(self):
        self.server.wait()
        self.transport.cleanup()
        super().wait()
        _record("stopped")

    def reset(self):
        _record("reset")
