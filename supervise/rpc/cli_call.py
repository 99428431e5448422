"""``supervise call``: one RPC call or cast from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from supervise import exitcodes
from supervise.config import Config, ConfigError, parse
from supervise.rpc import wire
from supervise.rpc.client import BrokerUnreachable, MessagingTimeout, Messenger, RPCClient
from supervise.rpc.dispatcher import Target
from supervise.terminal import printable


def _arguments(namespace: argparse.Namespace) -> dict[str, Any]:
    arguments: dict[str, Any] = {}
    if namespace.json is not None:
        try:
            arguments = json.loads(namespace.json)
        except ValueError as error:
            raise ConfigError(f"--json: not JSON: {error}") from None
        if not isinstance(arguments, dict):
            raise ConfigError("--json: expected a JSON object")
    for item in namespace.arguments:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected KEY=VALUE, got {item!r}")
        try:
            arguments[key] = json.loads(text)
        except ValueError:
            arguments[key] = text
    return arguments


def main(namespace: argparse.Namespace, conf: Config) -> int:
    # The outcome is printed; the client's own log lines are noise unless asked for.
    level = conf.log_level if hasattr(namespace, "log_level") else "ERROR"
    logging.basicConfig(level=level, format="supervise: %(levelname)s %(message)s")
    arguments = _arguments(namespace)
    timeout = (
        conf.rpc_response_timeout
        if namespace.timeout is None
        else parse("rpc_response_timeout", namespace.timeout, "--timeout")
    )
    if namespace.fanout and not namespace.cast:
        raise ConfigError("--fanout needs --cast: a fanout has no single reply")
    target = Target(
        topic=namespace.topic,
        server=namespace.server,
        fanout=namespace.fanout,
        namespace=namespace.namespace,
        version=namespace.api_version,
    )
    messenger = Messenger(conf.transport, publisher_confirms=conf.publisher_confirms)
    client = RPCClient(messenger, target, timeout=timeout, exchange=conf.control_exchange)
    try:
        if namespace.cast:
            client.cast({}, namespace.method, **arguments)
        else:
            print(json.dumps(client.call({}, namespace.method, **arguments)))
        return exitcodes.OK
    except wire.RemoteError as error:
        what = printable(f"{error.exc_type}: {error.value}")  # text from the server
        print(f"supervise: remote error: {what}", file=sys.stderr)
    except (MessagingTimeout, BrokerUnreachable) as error:
        print(f"supervise: {printable(str(error))}", file=sys.stderr)
    finally:
        messenger.close()
    return exitcodes.FAILED
