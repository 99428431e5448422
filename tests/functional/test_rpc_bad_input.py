"""Bad messages published with kombu straight into a topic queue, to real workers, on both
transports.

Whatever arrives, a worker stays up, logs one WARNING line (no traceback) naming the problem,
acks the message, answers a call it can read with an error reply, and loses nothing else:
the calls published just before it in the same burst, and those after, are all answered.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import re
import signal
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kombu
import pytest

from supervise.rpc.transport_url import kombu_urls
from supervise.rpc.wire import MAX_TIMEOUT
from tests.functional.conftest import each_transport, wait_until

JSON = "application/json"
ENVELOPE = {"oslo.version": "2.0"}
CREATED = "created-by-payload"  # a file that an unsafe deserializer would create
MAX_LOG_LINE = 1000


class CreateFile:
    """Unpickling this opens (so creates) a file: what a pickle body can make a worker do."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def envelope(inner: Any, version: Any = "2.0") -> bytes:
    return json.dumps({"oslo.version": version, "oslo.message": json.dumps(inner)}).encode()


def outer(value: Any) -> bytes:
    return json.dumps(value).encode()


@dataclass(frozen=True)
class Case:
    """`body(fields, workdir)` builds the bad body around `fields`: ``_unique_id`` and, for a
    call, ``_msg_id``/``_reply_q``/``_timeout``. `reply` is (class, message regex) of the
    error reply a call gets, None when it is too unreadable to answer."""

    body: Callable[[dict, Path], bytes]
    log: str  # regex that the one WARNING line matches
    reply: tuple[str, str] | None = None
    content_type: str = JSON
    kinds: tuple[str, ...] = ("call", "cast")
    args: tuple[str, ...] = ()
    headers: dict | None = None


def _echo(fields: dict, **extra: Any) -> dict:
    return {"method": "echo", "args": {"payload": 1}, **fields, **extra}


def _raw_inner(inner: dict) -> bytes:
    return outer({**ENVELOPE, "oslo.message": json.dumps(inner, ensure_ascii=False)})


def _nested(fields: dict) -> bytes:
    inner = json.dumps(_echo(fields, args={"payload": "here"}))
    inner = inner.replace('"here"', "[" * DEPTH + "]" * DEPTH)
    return outer({**ENVELOPE, "oslo.message": inner})


def _yaml(fields: dict, workdir: Path) -> bytes:
    lines = [f"{key}: {json.dumps(value)}" for key, value in fields.items()]
    path = workdir / CREATED
    return "\n".join(
        [
            "method: echo",
            f"args: {{payload: !!python/object/apply:builtins.open [{path}, w]}}",
            *lines,
        ]
    ).encode()


UNREADABLE = "refused a message from queue {topic}: "
REFUSED = r"refused {method} from queue {{topic}}: "
DEPTH = 5000  # deeper than json (and Python's recursion limit) can take
REJECTED = r"rejected a call to {method}: "
CASES = {
    # ----- unreadable: logged and dropped, nobody to answer ---------------------------------
    "malformed-json": Case(  # its reply address can still be read: its caller is told
        lambda f, _: envelope(_echo(f))[:-1],
        UNREADABLE + "body is not valid JSON",
        ("WireError", "^body is not valid JSON: "),
        kinds=("call",),
    ),
    "not-utf8": Case(
        lambda f, _: b"\xff\xfe" + envelope(_echo(f)),
        UNREADABLE + "body is not valid JSON",
        kinds=("call",),
    ),
    "json-list": Case(
        lambda f, _: outer([json.loads(envelope(_echo(f)))]),
        UNREADABLE + "body is a JSON list, not an object",
        kinds=("call",),
    ),
    "json-string": Case(
        lambda f, _: outer(envelope(_echo(f)).decode()),
        UNREADABLE + "body is a JSON str, not an object",
        kinds=("call",),
    ),
    "oslo.version-3.0": Case(
        lambda f, _: envelope(_echo(f), version="3.0"),
        UNREADABLE + r"unsupported oslo.version '3.0' \(only '2.0'\)",
        ("WireError", r"^unsupported oslo.version '3.0' \(only '2.0'\)$"),
        kinds=("call",),
    ),
    "oslo.message-object": Case(
        lambda f, _: outer({**ENVELOPE, "oslo.message": _echo(f)}),
        UNREADABLE + "oslo.message must be a JSON string, got dict",
        kinds=("call",),
    ),
    "oslo.message-number": Case(
        lambda f, _: outer({**ENVELOPE, "oslo.message": 42}),
        UNREADABLE + "oslo.message must be a JSON string, got int",
        kinds=("call",),
    ),
    "oslo.message-not-json": Case(
        lambda f, _: outer({**ENVELOPE, "oslo.message": json.dumps(_echo(f))[:-1]}),
        UNREADABLE + "oslo.message is not valid JSON",
        ("WireError", "^oslo.message is not valid JSON: "),
        kinds=("call",),
    ),
    "nested-too-deeply": Case(
        lambda f, _: _nested(f),
        UNREADABLE + "oslo.message is JSON nested too deeply",
        ("WireError", "^oslo.message is JSON nested too deeply$"),
    ),
    "compression-unknown": Case(
        lambda f, _: envelope(_echo(f)),
        UNREADABLE + "unsupported compression 'application/x-nope'",
        ("WireError", "^unsupported compression 'application/x-nope'$"),
        headers={"compression": "application/x-nope"},
    ),
    "compression-not-what-it-says": Case(
        lambda f, _: envelope(_echo(f)),
        UNREADABLE + r"cannot decompress the body \(application/x-gzip\)",
        ("WireError", r"^cannot decompress the body \(application/x-gzip\): "),
        headers={"compression": "application/x-gzip"},
    ),
    "compression-bomb": Case(  # 16 KB that would inflate to 16 MB
        lambda f, _: zlib.compress(envelope(_echo(f, args={"payload": "x" * (16 << 20)}))),
        UNREADABLE + r"a message of 100001 bytes is over max_message_size \(100000\)",
        headers={"compression": "application/x-gzip"},
        args=("--max-message-size", "100000"),
        kinds=("call",),
    ),
    "oslo.message-json-list": Case(
        lambda f, _: outer({**ENVELOPE, "oslo.message": json.dumps([_echo(f)])}),
        UNREADABLE + "oslo.message is a JSON list, not an object",
        kinds=("call",),
    ),
    "pickle": Case(
        lambda f, workdir: pickle.dumps(_echo(f, args={"payload": CreateFile(workdir / CREATED)})),
        UNREADABLE + "refusing content type 'application/x-python-serialize': only",
        content_type="application/x-python-serialize",
        kinds=("call",),
    ),
    "yaml": Case(
        _yaml,
        UNREADABLE + "refusing content type 'application/x-yaml': only",
        content_type="application/x-yaml",
        kinds=("call",),
    ),
    # ----- a malformed envelope: refused; a caller with a usable reply address is told ------
    "msg-id-a-list": Case(
        lambda f, _: envelope(_echo(f, _msg_id=[f["_msg_id"]])),
        REFUSED.format(method="a message") + "_msg_id must be a string",
        kinds=("call",),
    ),
    "reply-queue-a-number": Case(
        lambda f, _: envelope(_echo(f, _reply_q=42)),
        REFUSED.format(method="a message") + "_reply_q must be a string",
        kinds=("call",),
    ),
    "reply-queue-lone-surrogate": Case(
        lambda f, _: envelope(_echo(f, _reply_q="\ud800")),
        REFUSED.format(method="a message") + r"_reply_q must be a string .*'\\ud800'",
        kinds=("call",),
    ),
    "unique-id-an-object": Case(
        lambda f, _: envelope(_echo(f, _unique_id={"a": 1})),
        REFUSED.format(method="'echo'") + "_unique_id must be a string",
        ("InvalidMessage", r"^_unique_id must be a string of 1 to 255 bytes of UTF-8, got \{"),
    ),
    "timeout-infinity": Case(
        lambda f, _: envelope(_echo(f, _timeout=float("inf"))),
        REFUSED.format(method="'echo'") + "_timeout must be a finite number or null, got inf",
        ("InvalidMessage", "^_timeout must be a finite number or null, got inf$"),
        kinds=("call",),
    ),
    "timeout-nan": Case(
        lambda f, _: envelope(_echo(f, _timeout=float("nan"))),
        REFUSED.format(method="'echo'") + "_timeout must be a finite number or null, got nan",
        ("InvalidMessage", "^_timeout must be a finite number or null, got nan$"),
        kinds=("call",),
    ),
    "timeout-a-string": Case(
        lambda f, _: envelope(_echo(f, _timeout="10")),
        REFUSED.format(method="'echo'") + "_timeout must be a finite number or null",
        ("InvalidMessage", "^_timeout must be a finite number or null, got '10'$"),
        kinds=("call",),
    ),
    # ----- readable: a call gets an error reply, a cast is logged -----------------------------
    "lone-surrogate-in-text": Case(  # one escape in the body: oslo.message holds it raw
        lambda f, _: _raw_inner(_echo(f, method="fail", args={"message": "\ud800"})),
        "'fail' raised ValueError: \\\\ud800$",
        ("ValueError", "^\ud800$"),
    ),
    "no-method": Case(
        lambda f, _: envelope({"args": {}, **f}),
        REJECTED.format(method="None") + "'method' must be a non-empty string, got None",
        ("InvalidMessage", "^'method' must be a non-empty string, got None$"),
    ),
    "unknown-method": Case(
        lambda f, _: envelope(_echo(f, method="no_such_method")),
        REJECTED.format(method="'no_such_method'") + "Endpoint does not support RPC method",
        ("NoSuchMethod", "^Endpoint does not support RPC method 'no_such_method'$"),
    ),
    "unknown-method-long-name": Case(  # the log line stays short (MAX_LOG_LINE)
        lambda f, _: envelope(_echo(f, method="x" * 20_000)),
        "rejected a call to 'xxx.*Endpoint does not support RPC method 'xxx",
        ("NoSuchMethod", r"^Endpoint does not support RPC method 'x+\.\.\.$"),
        kinds=("call",),
    ),
    "private-method": Case(
        lambda f, _: envelope(_echo(f, method="_private", args={})),
        REJECTED.format(method="'_private'") + "Endpoint does not support RPC method '_private'",
        ("NoSuchMethod", "^Endpoint does not support RPC method '_private'$"),
    ),
    "args-missing": Case(
        lambda f, _: envelope(_echo(f, args={})),
        REJECTED.format(method="'echo'") + "RPC method 'echo': missing a required argument",
        ("InvalidArguments", "^RPC method 'echo': missing a required argument: 'payload'$"),
    ),
    "args-extra": Case(
        lambda f, _: envelope(_echo(f, args={"payload": 1, "extra": 2})),
        REJECTED.format(method="'echo'") + "RPC method 'echo': got an unexpected keyword",
        ("InvalidArguments", "^RPC method 'echo': got an unexpected keyword argument 'extra'$"),
    ),
    "args-wrong-name": Case(
        lambda f, _: envelope(_echo(f, args={"pay_load": 1})),
        REJECTED.format(method="'echo'") + "RPC method 'echo': ",
        ("InvalidArguments", "^RPC method 'echo': (missing a required|got an unexpected)"),
    ),
    "args-not-an-object": Case(
        lambda f, _: envelope(_echo(f, args=[1])),
        REJECTED.format(method="'echo'") + "'args' must be an object, got \\[1\\]",
        ("InvalidMessage", r"^'args' must be an object, got \[1\]$"),
        kinds=("call",),
    ),
    "handler-raises": Case(
        lambda f, _: envelope(_echo(f, method="fail", args={"message": "boom"})),
        "'fail' raised ValueError: boom$",
        ("ValueError", "^boom$"),
    ),
    "handler-raises-multiline": Case(  # the caller's text must not forge log lines
        lambda f, _: envelope(_echo(f, method="fail", args={"message": "boom\nsecond line"})),
        "'fail' raised ValueError: boom",
        ("ValueError", "^boom\nsecond line$"),
        kinds=("call",),
    ),
    "unserializable-result": Case(  # a cast's result goes nowhere: nothing to report
        lambda f, _: envelope(_echo(f, method="unserializable", args={})),
        "the result of 'unserializable' cannot be sent as JSON: Object of type object",
        ("TypeError", "^Object of type object is not JSON serializable$"),
        kinds=("call",),
    ),
    "over-max-message-size": Case(
        lambda f, _: envelope(_echo(f, args={"payload": "x" * 2000})),
        UNREADABLE + r"a message of \d+ bytes is over max_message_size",
        ("MessageTooLarge", r"^a message of \d+ bytes is over max_message_size \(1000\)$"),
        args=("--max-message-size", "1000"),
    ),
    "reply-queue-name-too-long": Case(  # AMQP names are at most 255 bytes: cannot answer
        lambda f, _: envelope(_echo(f, _reply_q="r" * 300)),
        "_reply_q|reply queue",
        kinds=("call",),
    ),
    "over-max-message-size-reply-queue-name-too-long": Case(
        lambda f, _: envelope(_echo(f, _reply_q="r" * 300, args={"payload": "x" * 2000})),
        "_reply_q|reply queue|over max_message_size",
        kinds=("call",),
        args=("--max-message-size", "1000"),
    ),
}
PARAMS = [
    pytest.param(name, kind, id=f"{name}-{kind}")
    for name, case in CASES.items()
    for kind in case.kinds
]


@dataclass
class Broker:
    """Our own kombu connection to the transport in force: publishes raw bodies, consumes a
    reply queue of our own."""

    url: str
    topic: str
    replies: dict[str, dict] = field(default_factory=dict)
    duplicates: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.conn = kombu.Connection(kombu_urls(self.url))
        self.channel = self.conn.channel()
        self.producer = kombu.Producer(self.channel, auto_declare=False)
        self.reply_queue = kombu.Queue(
            f"reply_{uuid.uuid4().hex}", durable=False, auto_delete=False
        )(self.channel)
        self.reply_queue.declare()
        self.consumer = kombu.Consumer(
            self.channel, [self.reply_queue], on_message=self._on_reply, no_ack=True
        )
        self.consumer.consume()

    def close(self) -> None:
        self.reply_queue.delete()
        self.conn.release()

    def _on_reply(self, message) -> None:
        reply = json.loads(json.loads(message.body)["oslo.message"])
        if reply.get("ending") is False:
            return  # a call monitor's heartbeat: the reply is still to come
        if reply["_msg_id"] in self.replies:
            self.duplicates.append(reply)
        self.replies.setdefault(reply["_msg_id"], reply)

    def fields(self, call: bool) -> dict:
        fields = {"_unique_id": uuid.uuid4().hex, "_context_user": "bad-input-test"}
        if call:
            # _timeout: None, as oslo sends it when the call has no call monitor
            fields.update(_msg_id=uuid.uuid4().hex, _reply_q=self.reply_queue.name, _timeout=None)
        return fields

    def publish(
        self,
        body: bytes,
        exchange: str,
        content_type: str = JSON,
        headers: dict | None = None,
        routing_key: str | None = None,
    ) -> None:
        self.producer.publish(
            body,
            exchange=exchange,
            routing_key=self.topic if routing_key is None else routing_key,
            content_type=content_type,
            headers=headers,
        )

    def call(self, exchange: str, method: str, **args: Any) -> str:
        fields = self.fields(call=True)
        self.publish(envelope({"method": method, "args": args, **fields}), exchange)
        return fields["_msg_id"]

    def wait_replies(self, msg_ids: set[str], timeout: float = 15.0) -> None:
        def arrived() -> bool:
            with contextlib.suppress(TimeoutError):
                self.conn.drain_events(timeout=0.05)
            return msg_ids <= self.replies.keys()

        wait_until(arrived, timeout, f"replies to {len(msg_ids)} calls")

    def waiting(self, queue: str) -> int:
        """Messages ready in `queue` (a passive declare: creates nothing)."""
        channel = self.conn.channel()
        try:
            return channel.queue_declare(queue=queue, passive=True).message_count
        finally:
            channel.close()

    def stop_consuming(self) -> None:
        """Cancel our consumer: every reply delivered before is handled once this returns."""
        self.consumer.cancel()


@pytest.fixture
def broker(transport_url, topic):
    broker = Broker(transport_url, topic)
    yield broker
    broker.close()


LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?P<level>[A-Z]+) \[")


def _problem_lines(log: str) -> list[str]:
    """Lines of WARNING and worse, and lines that are no log record's start (a traceback's,
    or the rest of a message that spans lines)."""
    return [
        line
        for line in log.splitlines()
        if not (match := LOG_LINE.match(line)) or match["level"] not in ("DEBUG", "INFO")
    ]


def _warnings(log: str) -> list[str]:
    return [
        line for line in log.splitlines() if (m := LOG_LINE.match(line)) and m["level"] == "WARNING"
    ]


@each_transport
@pytest.mark.parametrize(("name", "kind"), PARAMS)
def test_bad_message(name, kind, serve, client, broker, topic):
    case = CASES[name]
    call = kind == "call"
    workers, exchange = (1, "") if call else (2, "openstack")
    sup = serve(workers, "--graceful-shutdown-timeout", "10", *case.args)
    pids = sup.worker_pids()
    workdir = sup.workdir

    # One burst: calls in flight (sleep) and queued (echo), the bad message, more calls.
    before = {broker.call(exchange, "sleep", ms=300): 300 for _ in range(3)}
    before.update({broker.call(exchange, "echo", payload=i): i for i in range(5)})
    fields = broker.fields(call)
    broker.publish(case.body(fields, workdir), exchange, case.content_type, case.headers)
    after = {broker.call(exchange, "echo", payload=f"after-{i}"): f"after-{i}" for i in range(5)}

    expected = {**before, **after}
    bad_id = fields.get("_msg_id")
    answered = set(expected) | ({bad_id} if call and case.reply else set())
    broker.wait_replies(answered)
    for msg_id, result in expected.items():
        reply = broker.replies[msg_id]
        assert (reply["failure"], reply["result"], reply["ending"]) == (None, result, True)
    if call and case.reply:
        reply = broker.replies[bad_id]
        assert reply["result"] is None and reply["ending"] is True
        failure = json.loads(reply["failure"])
        assert failure["class"] == case.reply[0], failure
        assert re.search(case.reply[1], failure["message"]), failure["message"]

    # Acked: the queue ends empty.
    wait_until(lambda: broker.waiting(topic) == 0, what=f"queue {topic} empty")
    log_regex = case.log.format(topic=re.escape(topic))
    wait_until(
        lambda: any(re.search(log_regex, line) for line in _warnings(sup.log())),
        what=f"a WARNING matching {log_regex!r}",
    )

    # The workers serve on, the same processes.
    assert sup.worker_pids() == pids
    log = sup.log()
    assert "killed by signal" not in log and "exited with status" not in log, log
    assert client.call({}, "echo", payload="still serving") == "still serving"
    seen: set[int] = set()
    wait_until(lambda: seen.add(client.call({}, "pid")) or seen == pids, what="every worker")

    # A graceful stop hands back whatever is unacked: nothing is.
    sup.signal(signal.SIGTERM)
    assert sup.wait_exit() == 0
    assert broker.waiting(topic) == 0
    broker.stop_consuming()
    assert (broker.replies.keys(), broker.duplicates) == (answered, [])
    assert broker.waiting(broker.reply_queue.name) == 0

    log = sup.log()
    problems = _problem_lines(log)
    assert len(problems) == 1, "\n".join(problems) or log
    assert " WARNING [worker " in problems[0] and re.search(log_regex, problems[0]), problems[0]
    assert len(problems[0]) < MAX_LOG_LINE, f"a log line of {len(problems[0])} characters"
    assert "Traceback" not in log, log
    assert not (workdir / CREATED).exists(), "the payload ran"


def test_the_payloads_would_create_the_file(tmp_path):
    """The pickle and YAML bodies are real attacks: a careless decoder creates the file."""
    pickle.loads(CASES["pickle"].body({}, tmp_path))["args"]["payload"].close()
    assert (tmp_path / CREATED).exists()
    (tmp_path / CREATED).unlink()
    yaml = pytest.importorskip("yaml")
    yaml.unsafe_load(CASES["yaml"].body({"_unique_id": "u"}, tmp_path))["args"]["payload"].close()
    assert (tmp_path / CREATED).exists()


def _reply(msg_id: Any) -> dict:
    return {"result": 1, "failure": None, "ending": True, "_msg_id": msg_id}


BAD_REPLIES = {
    "msg-id-a-list": (envelope(_reply(["id"])), None),
    "msg-id-an-object": (envelope(_reply({"id": 1})), None),
    "lone-surrogate": (_raw_inner(_reply("\ud800")), None),
    "not-json": (b"{", None),
    "a-json-list": (b"[1]", None),
    "nested-too-deeply": (b"[" * DEPTH + b"]" * DEPTH, None),
    "unknown-compression": (envelope(_reply("id")), {"compression": "application/x-nope"}),
    "not-what-the-compression-says": (envelope(_reply("id")), {"compression": "zlib"}),
    "failure-an-object": (envelope({**_reply("id"), "failure": {"class": 1}}), None),
}


@each_transport
def test_bad_replies_leave_the_client_connected(serve, client, messenger, broker, caplog):
    """Replies the client cannot use are dropped, one by one: its connection (and with it
    every call waiting on it) is never reset."""
    serve(1)
    assert client.call({}, "echo", payload="before") == "before"
    caplog.set_level("DEBUG", logger="supervise.rpc")
    for body, headers in BAD_REPLIES.values():
        broker.publish(body, "", headers=headers, routing_key=messenger.reply_queue)
    wait_until(lambda: broker.waiting(messenger.reply_queue) == 0, what="every reply taken")
    assert client.call({}, "echo", payload="after") == "after"
    lost = [r for r in caplog.records if r.name == "supervise.rpc.io"]
    assert not lost, [r.getMessage() for r in lost]
    assert "Traceback" not in caplog.text


@each_transport
def test_the_longest_call_monitor_timeout_is_harmless(serve, client, broker, topic):
    """The largest `_timeout` accepted (wire.MAX_TIMEOUT) sets a call-monitor timer the I/O
    thread must wait for; without AMQP heartbeats it is the only timer it has, and select()
    must take it (1e300 would not fit its time_t: such a call is refused)."""
    sup = serve(1, "--heartbeat-timeout-threshold", "0")
    fields = broker.fields(True)
    broker.publish(envelope(_echo(fields, _timeout=MAX_TIMEOUT)), "", "application/json", {})
    broker.wait_replies({fields["_msg_id"]})
    assert broker.replies[fields["_msg_id"]]["result"] == 1, broker.replies[fields["_msg_id"]]
    assert client.call({}, "echo", payload="still serving") == "still serving"
    log = sup.log()
    assert "Traceback" not in log and "unexpected error" not in log, log
    assert "lost the connection" not in log, log
