"""``idle``: a service that serves nothing and stops when told, for trying the supervisor."""

from __future__ import annotations

import logging
import threading

LOG = logging.getLogger(__name__)


class IdleService:
    def __init__(self, worker_id: int):
        self.worker_id = worker_id
        self._stopped = threading.Event()

    def run(self) -> None:
        LOG.info("idle service %d running", self.worker_id)
        self._stopped.wait()

    def terminate(self) -> None:
        self._stopped.set()

    def reload(self) -> None:
        LOG.info("idle service %d reloaded", self.worker_id)
