"""A tiny cotyledon application for ``bench/supervisor.py``: N idle workers in a ServiceManager.

    BENCH_SOCKET=@name python bench/peers/cotyledon_app.py --workers 4

cotyledon speaks no sd_notify beyond one early ``READY=1``, so each worker reports itself: when
its ``run()`` starts it sends ``RUN=<pid>`` to the AF_UNIX datagram socket named by
``$BENCH_SOCKET`` (``@name`` is the abstract namespace), then waits for ``terminate()``.
``reload()`` is cotyledon's default, as in any Service that does not override it: the worker
exits and the manager starts a new one.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading

import cotyledon


def _socket_address(name: str) -> str:
    return "\0" + name[1:] if name.startswith("@") else name


def report(address: str, message: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), _socket_address(address))


class IdleService(cotyledon.Service):
    name = "idle"

    def __init__(self, worker_id: int, report_to: str):
        super().__init__(worker_id)
        self._report_to = report_to
        self._stopped = threading.Event()

    def run(self) -> None:
        report(self._report_to, f"RUN={os.getpid()}\nWORKER={self.worker_id}")
        self._stopped.wait()

    def terminate(self) -> None:
        self._stopped.set()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s",
    )
    manager = cotyledon.ServiceManager()
    manager.add(IdleService, workers=args.workers, args=(os.environ["BENCH_SOCKET"],))
    manager.run()


if __name__ == "__main__":
    main()
