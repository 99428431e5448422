"""Run inside the container, as the service's user, with the virtualenv's Python:
``caller.py STATE_DIR [CALLERS]`` keeps calls of `echo`'s ``sleep(ms)`` going on the embedded
transport of STATE_DIR (`tests.functional.load.Load`), prints ``calling`` once they run and,
when its stdin closes, one JSON line: how many calls succeeded and what failed."""

from __future__ import annotations

import json
import sys

from supervise.rpc.client import Messenger, RPCClient
from supervise.rpc.dispatcher import Target
from supervise.rpc.transport_url import local_transport_url
from tests.functional.load import Load


def main(state_dir: str, callers: str = "4") -> None:
    messenger = Messenger(local_transport_url(state_dir))
    client = RPCClient(messenger, Target(topic="echo"), timeout=30)
    load = Load(client, callers=int(callers), ms=10)
    with load.running():
        print("calling", flush=True)
        sys.stdin.read()
    messenger.close()
    print(json.dumps({"succeeded": load.succeeded, "failures": load.failures}), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
