"""The OpenStack peer for ``bench/rpc.py``: oslo.service's ProcessLauncher + oslo.messaging.

    python bench/peers/rpc_oslo_service.py --transport-url rabbit://u:p@host:5672/vhost \\
        --topic T [--workers 4] [--backend eventlet|threading]

``ProcessLauncher`` forks N workers; each runs an oslo.messaging RPC server (executor
``threading``, oslo's defaults otherwise: ack on receipt, no prefetch limit, 64 handler
threads) on topic T with server name = this host, serving ``echo(payload)``,
``sleep(ms)`` and ``pid()`` as supervise's ``echo`` service does. ``--backend`` picks
oslo.service's backend (its default, ``eventlet``, is what services run today; no monkey
patching either way, as the threading executor needs none).
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time

from oslo_config import cfg
from oslo_service import backend


class EchoEndpoint:
    def __init__(self) -> None:
        import oslo_messaging

        self.target = oslo_messaging.Target(version="1.0")

    def echo(self, context: dict, payload: object) -> object:
        return payload

    def sleep(self, context: dict, ms: float) -> float:
        time.sleep(ms / 1000)
        return ms

    def pid(self, context: dict) -> int:
        return os.getpid()


def make_service(transport_url: str, topic: str):
    """An oslo.service Service whose start() runs an RPC server (built in the child)."""
    import oslo_messaging
    from oslo_service import service

    class RPCService(service.Service):
        def __init__(self) -> None:
            super().__init__()
            self.server = None

        def start(self) -> None:
            super().start()
            transport = oslo_messaging.get_rpc_transport(cfg.CONF, url=transport_url)
            target = oslo_messaging.Target(topic=topic, server=socket.gethostname())
            # No executor argument (deprecated): unpatched, oslo picks "threading".
            self.server = oslo_messaging.get_rpc_server(transport, target, [EchoEndpoint()])
            if self.server.executor_type != "threading":
                raise RuntimeError(f"executor {self.server.executor_type!r}, not threading")
            self.server.start()

        def stop(self, graceful: bool = False) -> None:
            if self.server is not None:
                self.server.stop()
                self.server.wait()
            super().stop(graceful)

    return RPCService()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport-url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--backend", choices=("eventlet", "threading"), default="eventlet")
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s",
    )
    backend.init_backend(backend.BackendType(args.backend))
    from oslo_service import service  # its components come from the backend chosen above

    cfg.CONF([], project="rpc_bench")
    launcher = service.ProcessLauncher(cfg.CONF)
    launcher.launch_service(make_service(args.transport_url, args.topic), workers=args.workers)
    launcher.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
