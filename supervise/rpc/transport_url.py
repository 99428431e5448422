"""Broker addresses: oslo-style transport URLs turned into kombu URLs.

oslo.messaging writes several hosts in one URL, ``rabbit://u:p@h1:5672,u:p@h2:5672/vhost``;
kombu wants one URL per host, tried in turn (failover). Passwords never reach a log line:
`mask` replaces them.

``local:///absolute/path/queue.db`` is supervise's own broker-less transport
(`supervise.rpc.embedded`), for the processes of one host; `supervise.rpc.local_scheme`
registers its scheme with kombu.
"""

from __future__ import annotations

import os
import re
from urllib.parse import quote, unquote, urlsplit

LOCAL_SCHEME = "local"
SCHEMES = {"rabbit": "amqp", "amqp": "amqp", LOCAL_SCHEME: LOCAL_SCHEME}
DEFAULT_PORT = 5672
LOCAL_FILE = "queue.db"


class BadTransportURL(ValueError):
    """The transport URL cannot be used; the message is one line and shows no password."""


def mask(url: str) -> str:
    """The URL with every password replaced by ``****``."""
    return re.sub(r"(?<=[/,])([^:/@,]*):[^@/,]*@", r"\1:****@", url)


def kombu_urls(transport_url: str) -> list[str]:
    """One kombu URL per host of an oslo transport URL, in order."""
    parts = urlsplit(transport_url)
    scheme = SCHEMES.get(parts.scheme)
    if scheme is None:
        raise BadTransportURL(
            f"unsupported transport URL scheme {parts.scheme!r} in {mask(transport_url)} "
            f"(use {' or '.join(s + '://' for s in SCHEMES)})"
        )
    if scheme == LOCAL_SCHEME:
        local_path(transport_url)
        return [transport_url]
    virtual_host = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    urls = []
    for host in parts.netloc.split(","):
        credentials, _, address = host.rpartition("@")
        user, _, password = credentials.partition(":")
        if not address:
            raise BadTransportURL(f"a host is missing in {mask(transport_url)}")
        if ":" not in address.rsplit("]", 1)[-1]:
            address = f"{address}:{DEFAULT_PORT}"
        login = f"{user}:{password}@" if user else ""
        urls.append(f"{scheme}://{login}{address}/{quote(virtual_host, safe='')}")
    return urls


def local_transport_url(state_dir: str) -> str:
    """The URL of the local transport's file in a state directory."""
    return f"{LOCAL_SCHEME}://{quote(os.path.join(os.path.abspath(state_dir), LOCAL_FILE))}"


def local_path(transport_url: str) -> str:
    """The file of a ``local:///absolute/path`` URL."""
    parts = urlsplit(transport_url)
    path = unquote(parts.path)
    if parts.netloc or not path.startswith("/") or path.endswith("/") or parts.query:
        raise BadTransportURL(
            f"{transport_url} does not name a file: use {LOCAL_SCHEME}:///absolute/path/queue.db"
        )
    return path
