"""Property-based fuzzing of what a worker is sent: malformed envelopes and bodies published
raw into the topic queue (wrong types for every envelope key, lone surrogates, huge, negative
and non-finite numbers, bad content types and compression headers, deep nesting, oversize).

Afterwards: the same worker processes, no connection reset, every message acked, every
message with a usable reply address answered, the in-flight count back to zero (a clean
SIGTERM exits 0 at once, and calls are answered), and a clean stop exits 0.
"""

from __future__ import annotations

import json
import re
import signal
import time
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.functional.conftest import each_transport, wait_until
from tests.functional.test_rpc_bad_input import (  # noqa: F401 (fixture below)
    DEPTH,
    Broker,
    broker,
)

MAX_MESSAGE_SIZE = 100_000
EXAMPLES = 200

ODD_TEXT = st.sampled_from(["\ud800", "\udfff", "x" * 300, "", "\x00\n\x1b[31m", "caf\u00e9"])
ODD_NUMBER = st.sampled_from(
    [float("inf"), float("-inf"), float("nan"), -1, 0, 10**300, -(10**300), 1e308, True]
)
LEAF = st.one_of(st.none(), ODD_TEXT, ODD_NUMBER, st.text(max_size=20), st.integers())
VALUE = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
METHODS = st.one_of(
    st.sampled_from(["echo", "fail", "pid", "unserializable", "_private", "nope"]), VALUE
)
ENVELOPE_KEYS = (
    "_msg_id",
    "_reply_q",
    "_unique_id",
    "_timeout",
    "args",
    "method",
    "namespace",
    "version",
)
# How the body around the inner message is spoiled; each keeps the reply address readable.
SHAPES = ("plain", "deep", "oversize", "pre-envelope")
CONTENT_TYPES = st.sampled_from(["application/json", None, "application/x-yaml", "text/plain; x=1"])
COMPRESSION = st.sampled_from([None, "application/x-nope", "application/x-gzip", "bzip2", ""])


@st.composite
def messages(draw, reply_queue: str):
    """(body, content type, headers, msg_id expected to be answered or None)."""
    inner = {"method": draw(METHODS), "args": draw(st.one_of(VALUE, st.just({"payload": 1})))}
    for key in ENVELOPE_KEYS:
        if draw(st.booleans()):
            inner[key] = draw(VALUE)
    msg_id = None
    if draw(st.booleans()):  # call-shaped, with a usable reply address
        msg_id = uuid.uuid4().hex
        inner.update(_msg_id=msg_id, _reply_q=reply_queue)
    shape = draw(st.sampled_from(SHAPES))
    text = json.dumps(inner, ensure_ascii=draw(st.booleans()))
    if shape == "deep":
        text = text[:-1] + ', "deep": ' + "[" * DEPTH + "]" * DEPTH + "}"
    elif shape == "oversize":
        text = text[:-1] + ', "pad": "' + "x" * MAX_MESSAGE_SIZE + '"}'
    if shape != "pre-envelope":
        text = json.dumps({"oslo.version": "2.0", "oslo.message": text})
    compression = draw(COMPRESSION)
    headers = {"compression": compression} if compression is not None else None
    body = text.encode(errors="surrogatepass")
    return body, draw(CONTENT_TYPES), headers, msg_id


RECONNECTS = re.compile(r"lost the connection|connected again|unexpected error")


@each_transport
def test_fuzzed_messages_break_nothing(serve, client, broker, topic):  # noqa: F811
    sup = serve(2, "--max-message-size", str(MAX_MESSAGE_SIZE), "--graceful-shutdown-timeout", "20")
    pids = sup.worker_pids()
    sent: list[str | None] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(message=messages(broker.reply_queue.name))
    def publish(message):
        body, content_type, headers, msg_id = message
        broker.publish(body, "", content_type, headers)
        sent.append(msg_id)

    publish()
    expected = {msg_id for msg_id in sent if msg_id is not None}
    broker.wait_replies(expected, timeout=60)
    wait_until(lambda: broker.waiting(topic) == 0, timeout=30, what=f"queue {topic} empty")
    assert client.call({}, "echo", payload="after") == "after"

    log = sup.log()
    reconnects = RECONNECTS.findall(log)
    deaths = len(pids - sup.worker_pids())
    began = time.monotonic()
    sup.signal(signal.SIGTERM)
    status = sup.wait_exit(timeout=20)
    took = time.monotonic() - began
    print(
        f"\nfuzz: sent {len(sent)}, call-shaped {len(expected)}, answered "
        f"{len(expected & broker.replies.keys())}, duplicated {len(broker.duplicates)}, "
        f"lost {len(expected - broker.replies.keys())}, reconnects {len(reconnects)}, "
        f"worker deaths {deaths}, master exit {status} after {took:.1f} s"
    )
    assert deaths == 0 and "killed by signal" not in log and "exited with status" not in log
    assert reconnects == [], reconnects
    assert status == 0 and took < 5, "in-flight did not come back to zero"
    assert "Traceback" not in sup.log()
