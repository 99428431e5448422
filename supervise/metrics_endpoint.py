"""The metrics endpoint: the master's totals in Prometheus's formats, over HTTP.

Served by a `Listener` from the master's loop, which has no threads: each connection sends one
request (`GET /metrics` or `GET /`, HTTP/1.0 style) and gets one response, then is closed. A
scrape reads the master's state as it is at that moment; nothing is computed between scrapes.
Imported only when `metrics_port` is set, so that prometheus_client costs nothing otherwise.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

import supervise
from supervise.config import ConfigError
from supervise.listener import Listener
from supervise.metrics import Metrics
from supervise.progress import LATENCY_BUCKETS

if TYPE_CHECKING:
    from supervise.config import Config
    from supervise.master import Child, Master, Slot

MAX_REQUEST = 16 * 1024  # a scraper's request is a few hundred bytes
TIMEOUT = 10.0  # a connection's whole life: to send its request and read the response
PATHS = ("/", "/metrics")
LE = [floatToGoString(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]


def listen(conf: Config, master: Master, metrics: Metrics) -> Listener:
    address = f"{conf.metrics_host}:{conf.metrics_port}"
    try:
        family, kind, proto, _, sockaddr = socket.getaddrinfo(
            conf.metrics_host, conf.metrics_port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as error:
        raise ConfigError(f"cannot listen for metrics on {address}: {error.strerror}") from None
    except UnicodeError as error:  # a host name IDNA cannot encode
        raise ConfigError(f"cannot listen for metrics on {address}: {error}") from None
    # Not inherited across exec; a forked worker closes it with the master's other listeners.
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart's TIME_WAIT
        sock.bind(sockaddr)
        sock.listen(64)
    except OSError as error:
        sock.close()
        raise ConfigError(f"cannot listen for metrics on {address}: {error.strerror}") from None
    endpoint = Endpoint(master, metrics)
    return Listener(
        sock,
        master.selector,
        endpoint.answer,
        terminator=b"\r\n\r\n",
        max_request=MAX_REQUEST,
        timeout=TIMEOUT,
        too_large=_response("431 Request Header Fields Too Large", b"request too large\n"),
    )


class Endpoint:
    def __init__(self, master: Master, metrics: Metrics):
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(Collector(master, metrics))

    def answer(self, request: bytes, _peer: socket.socket) -> bytes:
        lines = request.decode("latin-1").split("\r\n")
        words = lines[0].split(" ")
        if len(words) != 3 or not words[2].startswith("HTTP/") or not lines[0].isprintable():
            return _response("400 Bad Request", b"bad request\n")
        method, target, _ = words
        headers = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                return _response("400 Bad Request", b"bad header\n")
            headers[name.lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            return _response("405 Method Not Allowed", b"GET only\n", allow="GET, HEAD")
        if target.split("?", 1)[0] not in PATHS:
            return _response("404 Not Found", b"not found: the metrics are at /metrics\n")
        encode, content_type = choose_encoder(headers.get("accept", ""))
        body = encode(self.registry)
        return _response("200 OK", body, content_type, head=method == "HEAD")


def _response(
    status: str,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    *,
    head: bool = False,
    allow: str | None = None,
) -> bytes:
    lines = [
        f"HTTP/1.0 {status}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    if allow is not None:
        lines.append(f"Allow: {allow}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head else body)


class Collector:
    """The master's totals and its workers' last samples, read at each scrape."""

    def __init__(self, master: Master, metrics: Metrics):
        self.master = master
        self.metrics = metrics
        self.version = supervise.version()

    def collect(self) -> Iterator[Metric]:
        yield from self._service()
        yield from self._messages()
        yield from self._workers()

    def _service(self) -> Iterator[Metric]:
        master, metrics = self.master, self.metrics
        info = InfoMetricFamily("supervise_build", "the service this master runs, and its version")
        info.add_metric([], {"service": master.service.name, "version": self.version})
        yield info
        yield _labelled(
            CounterMetricFamily,
            "supervise_reloads",
            "reloads that were applied (completed) or abandoned, keeping the running "
            "configuration (failed)",
            "outcome",
            {outcome: metrics.reloads[outcome] for outcome in ("completed", "failed")},
        )

    def _messages(self) -> Iterator[Metric]:
        metrics = self.metrics
        methods = sorted(metrics.methods.items())
        yield _labelled(
            CounterMetricFamily,
            "supervise_rpc_messages_handled",
            "RPC messages the workers handled (answered, or failed), by method",
            "method",
            {name: stats.handled for name, stats in methods},
        )
        yield _labelled(
            CounterMetricFamily,
            "supervise_rpc_messages_failed",
            "RPC messages whose method raised or could not be dispatched, by method",
            "method",
            {name: stats.failed for name, stats in methods},
        )
        latency = HistogramMetricFamily(
            "supervise_rpc_handler_duration_seconds",
            "time from taking an RPC message into flight to its handler's end, by method",
            labels=["method"],
        )
        for name, stats in methods:
            cumulative, buckets = 0, []
            for le, count in zip(LE, stats.buckets, strict=True):
                cumulative += count
                buckets.append((le, cumulative))
            latency.add_metric([name], buckets, stats.sum)
        yield latency
        yield CounterMetricFamily(
            "supervise_rpc_messages_redelivered",
            "RPC messages delivered again after a worker's exit, that the server queued again",
            value=metrics.redelivered,
        )
        yield CounterMetricFamily(
            "supervise_rpc_messages_dead_lettered",
            "RPC messages redelivered past max_redeliveries, moved to the dead-letter queue",
            value=metrics.dead_lettered,
        )
        in_flight: collections.Counter[int] = collections.Counter()
        for child in self.master.children.values():
            in_flight[child.slot] += child.progress.in_flight if child.progress else 0
        yield _labelled(
            GaugeMetricFamily,
            "supervise_rpc_messages_in_flight",
            "RPC messages being handled now (at the workers' last heartbeats), by slot",
            "slot",
            {str(slot): count for slot, count in sorted(in_flight.items())},
        )

    def _workers(self) -> Iterator[Metric]:
        master, metrics = self.master, self.metrics
        serving = [(slot.index, child) for slot in master.slots if (child := _serving(slot))]
        yield GaugeMetricFamily(
            "supervise_workers_configured",
            "worker slots the master keeps (workers, after TTIN, TTOU and reloads)",
            value=len(master.slots),
        )
        yield GaugeMetricFamily(
            "supervise_workers_ready",
            "slots whose worker is started and ready",
            value=sum(1 for slot in master.slots if slot.worker is not None and slot.worker.ready),
        )
        yield _labelled(
            CounterMetricFamily,
            "supervise_worker_exits",
            "worker exits, by cause; every cause but stop and scale-down is followed by a "
            "new worker in the slot",
            "cause",
            dict(sorted(metrics.exits.items())),
        )
        yield _labelled(
            GaugeMetricFamily,
            "supervise_worker_resident_memory_bytes",
            "resident memory of each slot's worker, at its last heartbeat",
            "slot",
            {str(index): child.rss for index, child in serving if child.rss is not None},
        )
        yield _labelled(
            GaugeMetricFamily,
            "supervise_worker_cpu_usage_ratio",
            "CPU time of each slot's worker per second of wall time (1.0: one CPU), between "
            "its last two heartbeats",
            "slot",
            {
                str(index): child.cpu_percent / 100
                for index, child in serving
                if child.cpu_percent is not None
            },
        )
        yield _labelled(
            CounterMetricFamily,
            "supervise_worker_cpu_seconds",
            "CPU time (user and system) of the workers of each slot, all generations",
            "slot",
            {str(slot): seconds for slot, seconds in sorted(metrics.cpu_seconds.items())},
        )


def _labelled(
    kind: type[CounterMetricFamily | GaugeMetricFamily],
    name: str,
    documentation: str,
    label: str,
    values: dict[str, float],
) -> Metric:
    """A family of one label: a sample per {label value: value}."""
    family = kind(name, documentation, labels=[label])
    for label_value, value in values.items():
        family.add_metric([label_value], value)
    return family


def _serving(slot: Slot) -> Child | None:
    """The worker a slot's gauges describe: its ready one, else the one starting."""
    return slot.worker or slot.replacement
