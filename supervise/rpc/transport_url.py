"""Broker addresses: oslo-style transport URLs turned into kombu URLs.

oslo.messaging writes several hosts in one URL, ``rabbit://u:p@h1:5672,u:p@h2:5672/vhost``;
kombu wants one URL per host, tried in turn (failover). Passwords never reach a log line:
`mask` replaces them.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote, urlsplit

SCHEMES = {"rabbit": "amqp", "amqp": "amqp"}
DEFAULT_PORT = 5672


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
