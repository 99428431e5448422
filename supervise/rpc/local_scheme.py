"""Importing this module registers the ``local://`` scheme with kombu.

It is kept apart from `supervise.rpc.transport_url` so that reading and checking a transport
URL (the master does, at start) does not import kombu: only a process that connects does.
"""

from kombu.transport import TRANSPORT_ALIASES

from supervise.rpc.transport_url import LOCAL_SCHEME

TRANSPORT_ALIASES.setdefault(LOCAL_SCHEME, "supervise.rpc.embedded:Transport")
