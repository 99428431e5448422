"""Service notifications sent by the real `supervise service ...` command, as a subprocess.

What arrives is read with plain kombu (on RabbitMQ and on the embedded transport) or with a
stock oslo.messaging notification listener; every test has a topic of its own.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import kombu
import oslo_messaging
import pytest

from supervise.db import Database
from supervise.rpc import local_scheme  # noqa: F401  (registers the local:// scheme)
from supervise.rpc.transport_url import kombu_urls
from tests.functional.conftest import each_transport, rabbitmqctl, wait_until
from tests.functional.oslo_clients import oslo_conf
from tests.functional.test_cli import clean_env, supervise

HOST, BINARY = "hosta", "nova-compute"
# nova's ServiceStatusPayload 1.1
NOVA_FIELDS = {
    "host", "binary", "topic", "report_count", "disabled", "disabled_reason",
    "availability_zone", "last_seen_up", "forced_down", "version", "uuid",
}  # fmt: skip
MESSAGE_KEYS = {
    "message_id", "publisher_id", "event_type", "priority", "payload", "timestamp",
    "_unique_id",
}  # fmt: skip
# A broker that is down: the command waits at most notifications.CLOSE_TIMEOUT for it
BOUND = 15.0


@pytest.fixture
def database(tmp_path: Path) -> str:
    """The URL of a services database holding one nova-compute record with a heartbeat."""
    directory = tmp_path / "db"
    directory.mkdir(mode=0o700)
    url = f"sqlite:///{directory / 'supervise.db'}"
    with Database(url) as db:
        db.ensure_schema()
        ref = db.service_create({"host": HOST, "binary": BINARY, "topic": "compute", "version": 7})
        db.service_report(ref.id)
    return url


@pytest.fixture
def notify_topic() -> str:
    return f"notify_{uuid.uuid4().hex[:12]}"


def record(database: str):
    with Database(database) as db:
        return db.service_get_by_host_and_binary(HOST, BINARY)


def service(database: str, tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    return supervise(["service", *args, "--database-url", database], tmp_path, env=env)


def take(transport_url: str, queue: str, count: int) -> list[dict]:
    """`count` bodies from `queue`, JSON-decoded, within 10 s."""
    bodies: list[dict] = []
    with kombu.Connection(kombu_urls(transport_url)) as conn:
        channel = conn.channel()

        def more() -> bool:
            message = channel.basic_get(queue, no_ack=True)
            if message is not None:
                bodies.append(json.loads(message.body))
            return len(bodies) >= count

        wait_until(more, what=f"{count} message(s) on {queue}")
    return bodies


def inner(body: dict) -> dict:
    assert body.keys() == {"oslo.version", "oslo.message"} and body["oslo.version"] == "2.0"
    return json.loads(body["oslo.message"])


def vhost_of(rabbit_url: str) -> str:
    return rabbit_url.rsplit("/", 1)[1]


@each_transport
def test_disable_is_notified_as_nova_s_service_update(
    database, tmp_path, transport_url, notify_topic
):
    before = record(database)
    done = service(
        database, tmp_path, "disable", HOST, BINARY, "--reason", "maintenance",
        "--transport-url", transport_url,
        "--notification-driver", "messagingv2",
        "--notification-topics", notify_topic,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    (message,) = [inner(body) for body in take(transport_url, f"{notify_topic}.info", 1)]
    assert message.keys() == MESSAGE_KEYS
    assert message["publisher_id"] == f"{BINARY}:{HOST}"
    assert (message["event_type"], message["priority"]) == ("service.update", "INFO")
    uuid.UUID(message["message_id"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d{6})?", message["timestamp"])
    assert message["payload"] == {
        "nova_object.name": "ServiceStatusPayload",
        "nova_object.namespace": "nova",
        "nova_object.version": "1.1",
        "nova_object.data": {
            "host": HOST,
            "binary": BINARY,
            "topic": "compute",
            "report_count": 1,
            "disabled": True,
            "disabled_reason": "maintenance",
            "availability_zone": None,
            "last_seen_up": before.last_seen_up.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "forced_down": False,
            "version": 7,
            "uuid": before.uuid,
        },
    }


def test_force_down_enable_and_delete_are_notified_in_order(database, tmp_path, notify_topic):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    options = ["--state-dir", str(state), "--notification-topics", notify_topic]
    env = clean_env(SUPERVISE_NOTIFICATION_DRIVER="messagingv2")
    for action in ("force-down", "enable", "delete"):
        done = service(database, tmp_path, action, HOST, BINARY, *options, env=env)
        assert (done.returncode, done.stderr) == (0, ""), action
    assert record(database) is None
    local_url = f"local://{state / 'queue.db'}"  # the default transport: the state directory's
    messages = [inner(body) for body in take(local_url, f"{notify_topic}.info", 3)]
    assert [m["event_type"] for m in messages] == ["service.update"] * 2 + ["service.delete"]
    data = [m["payload"]["nova_object.data"] for m in messages]
    assert [(d["forced_down"], d["disabled"]) for d in data] == [(True, False)] * 3
    assert len({m["message_id"] for m in messages}) == 3


def test_messaging_v1_sends_the_bare_message_and_both_drivers_send_one_each(
    database, tmp_path, rabbit_url, notify_topic
):
    config = tmp_path / "supervise.conf"
    # oslo's multi-valued option: the key repeats
    config.write_text(
        "[oslo_messaging_notifications]\n"
        "driver = messaging\n"
        "driver = messagingv2\n"
        f"topics = {notify_topic}\n"
        "retry = 3\n"  # oslo's, not supervise's: ignored
        f"transport_url = {rabbit_url}\n"
    )
    done = service(database, tmp_path, "force-down", HOST, BINARY, "--config-file", str(config))
    assert (done.returncode, done.stderr) == (0, "")
    bare, enveloped = take(rabbit_url, f"{notify_topic}.info", 2)
    assert bare.keys() == MESSAGE_KEYS
    assert bare["payload"]["nova_object.data"]["forced_down"] is True
    assert {k: v for k, v in inner(enveloped).items() if k != "_unique_id"} == {
        k: v for k, v in bare.items() if k != "_unique_id"
    }


def test_the_queue_and_binding_are_declared_as_oslo_declares_them(
    database, tmp_path, rabbit_url, notify_topic
):
    exchange = f"nova_{notify_topic}"
    done = service(
        database, tmp_path, "disable", HOST, BINARY,
        "--transport-url", rabbit_url,
        "--control-exchange", exchange,
        "--notification-driver", "messagingv2",
        "--notification-topics", f"{notify_topic},{notify_topic}_2",
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    vhost = vhost_of(rabbit_url)
    queues = rabbitmqctl(
        "list_queues", "-p", vhost, "--no-table-headers",
        "name", "durable", "auto_delete", "arguments", "messages",
    )  # fmt: skip
    mine = sorted(line.split() for line in queues.splitlines() if notify_topic in line)
    assert mine == [
        [f"{notify_topic}.info", "false", "false", "[]", "1"],
        [f"{notify_topic}_2.info", "false", "false", "[]", "1"],
    ]
    exchanges = rabbitmqctl(
        "list_exchanges", "-p", vhost, "--no-table-headers", "name", "type", "durable"
    )
    assert [exchange, "topic", "false"] in [line.split() for line in exchanges.splitlines()]
    bindings = rabbitmqctl(
        "list_bindings", "-p", vhost, "--no-table-headers",
        "source_name", "destination_name", "routing_key",
    )  # fmt: skip
    assert [exchange, f"{notify_topic}.info", f"{notify_topic}.info"] in [
        line.split() for line in bindings.splitlines()
    ]


@pytest.mark.parametrize("driver", ["noop", None])
def test_noop_and_no_driver_send_nothing(database, tmp_path, rabbit_url, notify_topic, driver):
    options = ["--notification-driver", driver] if driver else []
    done = service(
        database, tmp_path, "disable", HOST, BINARY,
        "--transport-url", rabbit_url, "--notification-topics", notify_topic, *options,
    )  # fmt: skip
    assert (done.returncode, done.stderr) == (0, "")
    assert record(database).disabled
    queues = rabbitmqctl("list_queues", "-p", vhost_of(rabbit_url), "--no-table-headers", "name")
    assert notify_topic not in queues


def test_the_log_driver_logs_oslo_s_line(database, tmp_path, notify_topic):
    done = service(
        database, tmp_path, "enable", HOST, BINARY, "--notification-driver", "log",
        "--state-dir", str(tmp_path / "absent"),  # the log driver needs no transport
    )  # fmt: skip
    assert done.returncode == 0
    (line,) = done.stderr.splitlines()
    prefix = "supervise: INFO "
    assert line.startswith(prefix)
    message = json.loads(line[len(prefix) :])
    assert message.keys() == MESSAGE_KEYS - {"_unique_id"}
    assert message["event_type"] == "service.update"


@pytest.fixture
def down_broker(request) -> Iterator[str]:
    """A transport URL whose broker is down: nothing listens on its port ("refused"), or
    something listens and never answers ("silent")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if request.param == "silent":
            sock.listen(16)  # the kernel completes TCP handshakes; nobody speaks AMQP
        yield f"rabbit://guest:guest@127.0.0.1:{sock.getsockname()[1]}/"


@pytest.mark.parametrize("down_broker", ["refused", "silent"], indirect=True)
def test_a_broker_that_is_down_costs_one_warning_and_the_change_stands(
    database, tmp_path, down_broker
):
    started = time.monotonic()
    done = service(
        database, tmp_path, "disable", HOST, BINARY, "--reason", "r",
        "--notification-driver", "messagingv2",
        "--notification-transport-url", down_broker,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert elapsed < BOUND
    assert record(database).disabled_reason == "r"
    (line,) = done.stderr.splitlines()
    assert line.startswith("supervise: WARNING notification service.update to ")
    assert "guest:****@" in line or "guest" not in line  # no password shown
    assert "disabled" in done.stdout


BAD_VALUES = [
    (["--notification-driver", "routing"], {}, "notification_driver: expected messagingv2"),
    (["--notification-driver", "messagingv2,kafka"], {}, "'kafka'"),
    (["--notification-topics", "a,,b"], {}, "notification_topics"),
    (["--notification-topics", "a#"], {}, "notification_topics"),
    (["--notification-transport-url", "kafka://h:9092"], {}, "unsupported transport URL"),
    ([], {"SUPERVISE_NOTIFICATION_DRIVER": "bogus"}, "SUPERVISE_NOTIFICATION_DRIVER"),
    ([], {"SUPERVISE_NOTIFICATION_TOPICS": ""}, "must not be empty"),
]


@pytest.mark.parametrize(("args", "env", "shown"), BAD_VALUES)
def test_bad_notification_values_exit_2_with_one_line(database, tmp_path, args, env, shown):
    done = service(database, tmp_path, "disable", HOST, BINARY, *args, env=clean_env(**env))
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith("supervise: error: ") and shown in line
    assert not record(database).disabled


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("driver = routing", "[oslo_messaging_notifications] driver: expected"),
        ("transport_url = http://h/", "[oslo_messaging_notifications] transport_url:"),
    ],
)
def test_bad_notification_values_in_a_file_exit_2_for_service_and_run(
    database, tmp_path, text, shown
):
    config = tmp_path / "nova.conf"
    config.write_text(f"[oslo_messaging_notifications]\n{text}\n")
    for args in (["service", "enable", HOST, BINARY, "--database-url", database], ["idle"]):
        done = supervise([*args, "--config-file", str(config)], tmp_path)
        assert done.returncode == 2, args
        (line,) = done.stderr.splitlines()
        assert line.startswith(f"supervise: error: {config}: {shown}")


# ----- a stock oslo.messaging notification listener --------------------------------------


class Received:
    """What a stock oslo.messaging notification endpoint was given at priority info."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[dict, str, str, dict, dict]] = []

    def info(self, ctxt, publisher_id, event_type, payload, metadata):
        with self.lock:
            self.items.append((ctxt, publisher_id, event_type, payload, metadata))

    def count(self) -> int:
        with self.lock:
            return len(self.items)


def test_a_stock_oslo_notification_listener_receives_disable_and_enable(
    database, tmp_path, rabbit_url, notify_topic
):
    def change(action: str) -> None:
        done = service(
            database, tmp_path, action, HOST, BINARY,
            "--transport-url", rabbit_url,
            "--notification-driver", "messagingv2",
            "--notification-topics", notify_topic,
        )  # fmt: skip
        assert (done.returncode, done.stderr) == (0, ""), action

    change("disable")  # before any listener: the queue supervise declared keeps it
    transport = oslo_messaging.get_notification_transport(oslo_conf(), url=rabbit_url)
    received = Received()
    listener = oslo_messaging.get_notification_listener(
        transport, [oslo_messaging.Target(topic=notify_topic)], [received], executor="threading"
    )
    listener.start()
    try:
        wait_until(lambda: received.count() == 1, what="the disable's notification")
        change("enable")
        wait_until(lambda: received.count() == 2, what="the enable's notification")
    finally:
        listener.stop()
        listener.wait()
        transport.cleanup()
    for (_ctxt, publisher_id, event_type, payload, metadata), disabled in zip(
        received.items, (True, False), strict=True
    ):
        assert (publisher_id, event_type) == (f"{BINARY}:{HOST}", "service.update")
        assert payload["nova_object.name"] == "ServiceStatusPayload"
        assert payload["nova_object.data"].keys() == NOVA_FIELDS
        assert payload["nova_object.data"]["disabled"] is disabled
        assert metadata.keys() == {"message_id", "timestamp"}
