"""supervise.rpc.wire: the oslo.messaging 2.0 envelope, contexts, replies and failures.

The interop tests at the end run against the real oslo.messaging when it is installed
(`pip install oslo.messaging`) and are skipped otherwise.
"""

from __future__ import annotations

import bz2
import json
import pickle
import sys
import types
import zlib
from pathlib import Path

import pytest

from supervise.rpc import wire
from supervise.rpc.wire import RemoteError, WireError

MAX = 1 << 20
CALL = {
    "method": "echo",
    "args": {"value": [1, "two", {"three": 3.0}], "text": "caf\u00e9 \u2603"},
    "namespace": "baseapi",
    "version": "1.1",
    "_unique_id": "5d1d3b9b7d6b4a4c8a3f0e0f7b1c2d3e",
    "_msg_id": "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "_reply_q": "reply_0123456789abcdef0123456789abcdef",
    "_timeout": None,
    "_context_user_id": "u1",
    "_context_roles": ["admin"],
}


def body_of(message: dict) -> bytes:
    """What kombu puts on the wire for an encoded message."""
    return json.dumps(wire.encode(message)).encode()


def reject(body: object, content_type: str | None = "application/json", max_size: int = MAX):
    with pytest.raises(WireError) as caught:
        wire.decode(body, content_type, max_size)
    text = str(caught.value)
    assert text
    assert "\n" not in text
    return text


class EvilPayload:
    """Unpickling this creates the file at `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


# Envelope round trips


def test_encode_is_the_oslo_envelope():
    envelope = wire.encode(CALL)
    assert set(envelope) == {"oslo.version", "oslo.message"}
    assert envelope["oslo.version"] == "2.0"
    assert isinstance(envelope["oslo.message"], str)
    assert json.loads(envelope["oslo.message"]) == CALL


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "application/json; charset=utf-8", "Application/JSON", None, ""],
)
def test_decode_round_trips_bytes(content_type):
    assert wire.decode(body_of(CALL), content_type, MAX) == CALL


def test_decode_round_trips_str_and_dict():
    assert wire.decode(body_of(CALL).decode(), "application/json", MAX) == CALL
    assert wire.decode(wire.encode(CALL), "application/json", MAX) == CALL


def test_decode_accepts_an_unenveloped_object_as_oslo_does():
    assert wire.decode(json.dumps(CALL).encode(), "application/json", MAX) == CALL
    assert wire.decode(dict(CALL), None, MAX) == CALL


def test_decode_ignores_extra_envelope_keys():
    envelope = {**wire.encode(CALL), "signature": "later"}
    assert wire.decode(json.dumps(envelope), "application/json", MAX) == CALL


def test_a_body_of_exactly_max_size_is_accepted():
    body = body_of(CALL)
    assert wire.decode(body, "application/json", len(body)) == CALL


# Rejections


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-python-serialize",
        "application/x-yaml",
        "application/data",
        "application/x-msgpack",
        "text/plain",
        "application/json-patch+json",
        "application/x-python-serialize\napplication/json",
    ],
)
def test_non_json_content_types_are_refused(content_type):
    text = reject(body_of(CALL), content_type)
    assert "content type" in text


def test_a_pickle_body_is_refused_without_unpickling(tmp_path):
    witness = tmp_path / "witness"
    pickle.loads(pickle.dumps(EvilPayload(witness)))
    assert witness.exists(), "the payload must really create a file when unpickled"

    target = tmp_path / "pwned"
    payload = pickle.dumps(EvilPayload(target))
    reject(payload, "application/x-python-serialize")
    reject(payload, None)
    reject(payload, "application/json")
    assert not target.exists()


@pytest.mark.parametrize("content_type", [None, ""])
def test_a_missing_content_type_needs_a_json_body(content_type):
    reject(b"\x80\x04not json", content_type)
    reject(b"method: echo", content_type)


def test_a_non_json_content_type_is_refused_even_for_a_parsed_dict():
    reject(wire.encode(CALL), "application/x-yaml")


def test_bodies_over_max_size_are_refused():
    body = body_of(CALL)
    assert "bytes" in reject(body, max_size=len(body) - 1)
    assert "bytes" in reject(body.decode(), max_size=len(body) - 1)
    assert "bytes" in reject(wire.encode(CALL), max_size=len(body) - 1)


def test_max_size_counts_bytes_not_characters():
    body = json.dumps({"method": "\u00e9" * 100}, ensure_ascii=False)
    assert len(body) < 150 < len(body.encode())
    reject(body, max_size=150)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"{'method': 'echo'}", b"\xff\xfe\xfa", b"NaN garbage", b"{}{}"],
)
def test_invalid_json_is_refused(body):
    assert "JSON" in reject(body)


def test_deeply_nested_json_is_refused():
    reject(b"[" * 100_000 + b"]" * 100_000)
    reject(json.dumps({"oslo.version": "2.0", "oslo.message": "[" * 100_000}))


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null", b"true"])
def test_a_body_that_is_not_an_object_is_refused(body):
    assert "not an object" in reject(body)


@pytest.mark.parametrize("version", ["1.0", "2.1", "3.0", "2", "2.0.0", 2.0, None, ["2.0"]])
def test_unknown_envelope_versions_are_refused(version):
    envelope = {"oslo.version": version, "oslo.message": json.dumps(CALL)}
    assert "oslo.version" in reject(json.dumps(envelope))


@pytest.mark.parametrize(
    "inner",
    [
        None,
        42,
        {"method": "echo"},
        ["method"],
        "not json",
        "[1, 2]",
        '"a string"',
        "null",
    ],
)
def test_an_oslo_message_that_is_not_a_json_object_string_is_refused(inner):
    reject(json.dumps({"oslo.version": "2.0", "oslo.message": inner}))


def test_half_an_envelope_is_refused():
    reject(json.dumps({"oslo.version": "2.0"}))
    reject(json.dumps({"oslo.message": json.dumps(CALL)}))


def test_wire_error_quotes_untrusted_text_on_one_line():
    text = reject(json.dumps({"oslo.version": "9.9\nINFO forged log line"}))
    assert "forged" in text


# Ids, contexts, replies


def test_new_unique_id_is_uuid4_hex():
    ids = {wire.new_unique_id() for _ in range(100)}
    assert len(ids) == 100
    for unique_id in ids:
        assert len(unique_id) == 32
        int(unique_id, 16)


def test_pack_context_prefixes_every_key():
    context = {"user_id": "u1", "roles": ["admin"], "request_id": "req-1"}
    assert wire.pack_context(context) == {
        "_context_user_id": "u1",
        "_context_roles": ["admin"],
        "_context_request_id": "req-1",
    }


def test_unpack_context_splits_without_changing_the_message():
    original = dict(CALL)
    context, rest = wire.unpack_context(CALL)
    assert original == CALL
    assert context == {"user_id": "u1", "roles": ["admin"]}
    assert rest == {k: v for k, v in CALL.items() if not k.startswith("_context_")}
    assert {"_msg_id", "_reply_q", "_timeout", "_unique_id"} <= set(rest)


def test_context_round_trip():
    context = {"user_id": "u1", "is_admin": True, "nested": {"a": [1]}}
    message = {"method": "m", **wire.pack_context(context)}
    assert wire.unpack_context(message) == (context, {"method": "m"})


def test_reply_is_a_single_ending_message():
    message = wire.reply("m1", result={"ok": True})
    assert set(message) == {"result", "failure", "ending", "_msg_id", "_unique_id"}
    assert message["result"] == {"ok": True}
    assert message["failure"] is None
    assert message["ending"] is True
    assert message["_msg_id"] == "m1"
    assert len(message["_unique_id"]) == 32
    assert wire.reply("m1")["_unique_id"] != message["_unique_id"]
    assert wire.decode(body_of(message), "application/json", MAX) == message


def test_failure_reply_carries_no_result():
    message = wire.reply("m1", failure=wire.serialize_failure(ValueError("x")))
    assert message["result"] is None
    assert wire.deserialize_failure(message["failure"]).exc_type == "ValueError"


# Failures


class CustomError(Exception):
    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.kwargs = {"code": code}


def raise_in_a_named_function(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


def test_serialize_failure_has_oslo_fields():
    error = raise_in_a_named_function(CustomError("disk full", code=28))
    data = json.loads(wire.serialize_failure(error))
    assert set(data) == {"class", "module", "message", "tb", "args", "kwargs"}
    assert data["class"] == "CustomError"
    assert data["module"] == CustomError.__module__
    assert data["message"] == "disk full"
    assert data["args"] == ["disk full"]
    assert data["kwargs"] == {"code": 28}
    assert isinstance(data["tb"], list)
    assert all(isinstance(line, str) for line in data["tb"])
    assert data["tb"][0] == "Traceback (most recent call last):\n"
    assert "raise_in_a_named_function" in "".join(data["tb"])
    assert data["tb"][-1] == f"{CustomError.__module__}.CustomError: disk full\n"


def test_an_unraised_exception_serializes_without_a_traceback_frame():
    data = json.loads(wire.serialize_failure(KeyError("k")))
    assert data["tb"] == ["KeyError: 'k'\n"]
    assert data["message"] == "'k'"


def test_failure_round_trip_keeps_class_message_and_traceback():
    error = raise_in_a_named_function(ValueError("boom"))
    remote = wire.deserialize_failure(wire.serialize_failure(error))
    assert isinstance(remote, RemoteError)
    assert remote.exc_type == "ValueError"
    assert remote.value == "boom"
    assert remote.traceback.startswith("Traceback (most recent call last):")
    assert "raise_in_a_named_function" in remote.traceback
    assert remote.traceback.endswith("ValueError: boom")
    assert str(remote) == f"Remote error: ValueError boom\n{remote.traceback}"


def test_remote_suffix_is_stripped_as_oslo_does():
    remote_type = type("NoValidHost_Remote", (Exception,), {"__module__": "nova.exception_Remote"})
    data = json.loads(wire.serialize_failure(remote_type("no host")))
    assert (data["class"], data["module"]) == ("NoValidHost", "nova.exception")


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str for you")

    __repr__ = __str__


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def test_json_unsafe_args_fall_back_to_str():
    cycle: list = []
    cycle.append(cycle)
    marker = object()
    error = ValueError(
        marker, {1, 2}, b"raw", {(1, 2): "tuple key"}, cycle, 1.5, None, Unprintable()
    )
    error.kwargs = {"when": marker, 3: "int key"}
    data = json.loads(wire.serialize_failure(error))
    args = data["args"]
    assert args[0] == str(marker)
    assert args[1] == str({1, 2})
    assert args[2] == str(b"raw")
    assert args[3] == str({(1, 2): "tuple key"})
    assert isinstance(args[4], str)
    assert args[5:7] == [1.5, None]
    assert args[7] == "<unprintable Unprintable object>"
    assert data["kwargs"] == {"when": str(marker), "3": "int key"}


def test_kwargs_that_are_not_a_mapping_are_dropped():
    error = ValueError("x")
    error.kwargs = ["not", "a", "mapping"]
    assert json.loads(wire.serialize_failure(error))["kwargs"] == {}


def test_an_exception_whose_str_fails_still_serializes():
    data = json.loads(wire.serialize_failure(UnprintableError("x")))
    assert data["class"] == "UnprintableError"
    assert data["message"] == "<unprintable UnprintableError object>"


def test_remote_error_has_oslo_attribute_names():
    remote = RemoteError("KeyError", "'k'", "Traceback ...")
    assert (remote.exc_type, remote.value, remote.traceback) == ("KeyError", "'k'", "Traceback ...")
    assert str(remote) == "Remote error: KeyError 'k'\nTraceback ..."
    assert isinstance(remote, Exception)


def test_remote_error_pickles():
    remote = pickle.loads(pickle.dumps(RemoteError("KeyError", "'k'", "tb")))
    assert (remote.exc_type, remote.value, remote.traceback) == ("KeyError", "'k'", "tb")


@pytest.mark.parametrize(
    "data",
    [
        "",
        "not json",
        "[1, 2]",
        "null",
        '"just a string"',
        "{}",
        '{"class": 5, "message": ["m"], "tb": 7}',
        '{"class": null, "message": null, "tb": null}',
        '{"tb": [1, null, "line\\n"]}',
        '{"tb": "one string"}',
        "[" * 100_000,
        "[" * 50_000 + "]" * 50_000,
        b'{"class": "ValueError"}',
        b"\xff\xfe",
        None,
        42,
    ],
)
def test_deserialize_failure_never_raises_on_malformed_data(data):
    remote = wire.deserialize_failure(data)
    assert isinstance(remote, RemoteError)
    assert isinstance(remote.value, str)
    assert isinstance(remote.traceback, str)
    str(remote)


def test_deserialize_failure_keeps_unreadable_data_as_the_value():
    remote = wire.deserialize_failure("not json")
    assert (remote.exc_type, remote.value, remote.traceback) == (None, "not json", "")


def test_deserialize_failure_reads_partial_data():
    remote = wire.deserialize_failure('{"class": "KeyError"}')
    assert (remote.exc_type, remote.value, remote.traceback) == ("KeyError", "", "")
    assert wire.deserialize_failure('{"tb": "one string"}').traceback == "one string"


# Interop with the real oslo.messaging


@pytest.fixture
def oslo():
    pytest.importorskip(
        "oslo_messaging", reason="oslo.messaging is not installed: pip install oslo.messaging"
    )
    from oslo_messaging._drivers import amqp, amqpdriver, common

    return types.SimpleNamespace(common=common, amqp=amqp, amqpdriver=amqpdriver)


def over_the_wire(envelope: dict) -> dict:
    """What kombu's JSON serializer hands the receiving side."""
    return json.loads(json.dumps(envelope))


def test_oslo_reads_our_envelope(oslo):
    assert oslo.common.deserialize_msg(over_the_wire(wire.encode(CALL))) == CALL


def test_we_read_oslos_envelope(oslo):
    body = json.dumps(oslo.common.serialize_msg(CALL)).encode()
    assert wire.decode(body, "application/json", MAX) == CALL


def test_oslo_reads_our_context(oslo):
    message = {"method": "m", **wire.pack_context({"user_id": "u1", "roles": ["r"]})}
    message["_msg_id"] = "m1"
    context = oslo.amqp.unpack_context(dict(message))
    assert context.to_dict()["user_id"] == "u1"
    assert context.to_dict()["roles"] == ["r"]
    assert context.msg_id == "m1"


def test_we_read_oslos_context(oslo):
    message = {"method": "m", "args": {}}
    oslo.amqp.pack_context(message, {"user_id": "u1", "roles": ["r"]})
    oslo.amqp._add_unique_id(message)
    context, rest = wire.unpack_context(message)
    assert context == {"user_id": "u1", "roles": ["r"]}
    assert set(rest) == {"method", "args", "_unique_id"}


def test_oslo_reads_our_failure(oslo):
    error = raise_in_a_named_function(ValueError("boom"))
    rebuilt = oslo.common.deserialize_remote_exception(wire.serialize_failure(error), [])
    assert type(rebuilt) is ValueError
    assert str(rebuilt).startswith("boom\n")
    assert "raise_in_a_named_function" in str(rebuilt)


def test_oslo_reads_our_failure_of_a_module_it_does_not_allow(oslo):
    error = raise_in_a_named_function(CustomError("disk full", code=28))
    remote = oslo.common.deserialize_remote_exception(wire.serialize_failure(error), [])
    import oslo_messaging

    assert isinstance(remote, oslo_messaging.RemoteError)
    assert (remote.exc_type, remote.value) == ("CustomError", "disk full")
    assert any("raise_in_a_named_function" in line for line in remote.traceback)


def test_oslo_rebuilds_our_failure_of_an_allowed_module_with_kwargs(oslo):
    assert sys.modules.get(CustomError.__module__) is not None
    error = raise_in_a_named_function(CustomError("disk full", code=28))
    rebuilt = oslo.common.deserialize_remote_exception(
        wire.serialize_failure(error), [CustomError.__module__]
    )
    assert isinstance(rebuilt, CustomError)
    assert rebuilt.kwargs == {"code": 28}
    assert str(rebuilt).startswith("disk full\n")


def test_oslo_reads_our_failure_with_json_unsafe_args(oslo):
    error = ValueError(object(), {1, 2})
    rebuilt = oslo.common.deserialize_remote_exception(wire.serialize_failure(error), [])
    assert type(rebuilt) is ValueError


def test_we_read_oslos_failure(oslo):
    error = raise_in_a_named_function(ValueError("boom"))
    data = oslo.common.serialize_remote_exception((type(error), error, error.__traceback__))
    remote = wire.deserialize_failure(data)
    assert (remote.exc_type, remote.value) == ("ValueError", "boom")
    assert remote.traceback.startswith("Traceback (most recent call last):")
    assert "raise_in_a_named_function" in remote.traceback
    assert remote.traceback.endswith("ValueError: boom")


def test_our_failure_matches_oslos_field_for_field(oslo):
    error = raise_in_a_named_function(CustomError("disk full", code=28))
    ours = json.loads(wire.serialize_failure(error))
    theirs = json.loads(
        oslo.common.serialize_remote_exception((type(error), error, error.__traceback__))
    )
    assert ours == theirs


def oslo_process_reply(oslo, message: dict):
    """What oslo's RPC client makes of a reply: ReplyWaiter.__call__ then _process_reply."""
    data = oslo.common.deserialize_msg(over_the_wire(wire.encode(message)))
    data.pop("_msg_id")
    waiter = types.SimpleNamespace(msg_id_cache=oslo.amqp._MsgIdCache(), allowed_remote_exmods=[])
    return oslo.amqpdriver.ReplyWaiter._process_reply(waiter, data)


def test_oslos_client_reads_our_result_reply(oslo):
    assert oslo_process_reply(oslo, wire.reply("m1", result={"a": [1]})) == ({"a": [1]}, True)


def test_oslos_client_reads_our_failure_reply(oslo):
    failure = wire.serialize_failure(raise_in_a_named_function(KeyError("k")))
    result, ending = oslo_process_reply(oslo, wire.reply("m1", failure=failure))
    assert ending is True
    assert type(result) is KeyError


def test_we_read_oslos_reply(oslo):
    error = raise_in_a_named_function(KeyError("k"))
    message = {
        "result": None,
        "failure": oslo.common.serialize_remote_exception((type(error), error, None)),
        "ending": True,
        "_msg_id": "m1",
    }
    oslo.amqp._add_unique_id(message)
    body = json.dumps(oslo.common.serialize_msg(message)).encode()
    decoded = wire.decode(body, "application/json", MAX)
    assert decoded == message
    assert wire.deserialize_failure(decoded["failure"]).exc_type == "KeyError"


def test_encode_turns_times_sets_and_uuids_into_json_as_oslo_does():
    import datetime
    import uuid

    stamp = datetime.datetime(2024, 1, 2, 3, 4, 5, 6)
    ident = uuid.UUID(int=1)
    inner = json.loads(wire.encode({"t": stamp, "s": {1}, "u": ident})["oslo.message"])
    assert inner == {"t": "2024-01-02T03:04:05.000006", "s": [1], "u": str(ident)}
    with pytest.raises(TypeError):
        wire.encode({"o": object()})


# Refused before parsing, decompressed within the limit, reply addresses of the refused


def test_the_size_limit_is_checked_before_the_body_is_parsed():
    """Not even valid JSON: a parse would say so; the size check comes first."""
    with pytest.raises(wire.MessageTooLarge, match=r"^a message of 1001 bytes is over"):
        wire.decode(b"[" * 1001, "application/json", 1000)


@pytest.mark.parametrize("codec", [("application/x-gzip", zlib), ("application/x-bz2", bz2)])
def test_a_compressed_body_is_decompressed_as_kombu_compresses_it(codec):
    name, module = codec
    assert wire.decode(module.compress(body_of(CALL)), None, MAX, name) == CALL


def test_decompression_stops_at_the_limit():
    bomb = zlib.compress(b" " * (64 << 20))  # 64 KB that inflate to 64 MB
    with pytest.raises(wire.MessageTooLarge, match=r"of 1048577 bytes"):
        wire.decode(bomb, None, MAX, "zlib")


@pytest.mark.parametrize(
    ("compression", "error"),
    [
        ("application/x-nope", "unsupported compression 'application/x-nope'"),
        (["zlib"], "unsupported compression"),
        ("zlib", r"cannot decompress the body \(zlib\)"),
        ("application/x-bz2", r"cannot decompress the body \(application/x-bz2\)"),
    ],
)
def test_a_bad_compression_header_is_a_wire_error(compression, error):
    with pytest.raises(WireError, match=error):
        wire.decode(body_of(CALL), None, MAX, compression)


def test_a_lone_surrogate_in_a_body_decoded_already_is_measured_and_read():
    """Text cannot hold one as UTF-8 can: it is up to the envelope's checks to refuse it."""
    assert wire.decode('{"method": "\ud800"}', None, 20) == {"method": "\ud800"}


ADDRESS = (CALL["_msg_id"], CALL["_reply_q"])


@pytest.mark.parametrize(
    "body",
    [
        body_of(CALL)[:-1],  # not valid JSON
        body_of({**CALL, "method": "\ud800"}).replace(b"\\\\ud800", b"\xed\xa0\x80"),  # not UTF-8
        body_of(CALL).replace(b'"2.0"', b'"3.0"'),
        body_of({**CALL, "method": "DEEP"}).replace(b'\\"DEEP\\"', b"[" * 5000 + b"]" * 5000),
        json.dumps({**CALL, "args": {"a": "x" * 100_000, "b": [{"_msg_id": "no"}]}}).encode(),
    ],
    ids=["truncated", "not-utf8", "version", "too-deep", "large-no-envelope"],
)
def test_the_reply_address_of_a_refused_body_is_read_without_parsing_it(body):
    assert wire.reply_address(body) == ADDRESS


@pytest.mark.parametrize(
    "body",
    [
        b"\xff{",
        b"[1]",
        b"\xff" + body_of(CALL),
        b'{"_msg_id": "a"}',
        b'{"_msg_id": "a", "_reply_q": 5}',
        b"{" * 100,
    ],
)
def test_no_reply_address_when_a_body_holds_none(body):
    assert wire.reply_address(body) is None


# The envelope: validated before anything reads it


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("_msg_id", ["id"]),
        ("_msg_id", ""),
        ("_msg_id", "x" * 256),
        ("_reply_q", "\ud800"),
        ("_reply_q", 42),
        ("_reply_q", "\u00e9" * 128),  # 256 bytes
    ],
)
def test_a_malformed_reply_address_is_refused(field, value):
    with pytest.raises(WireError, match=f"^{field} must be a string of 1 to 255 bytes"):
        wire.envelope({**CALL, field: value})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("_unique_id", {"a": 1}),
        ("_unique_id", "\udfff"),
        ("_timeout", float("inf")),
        ("_timeout", float("nan")),
        ("_timeout", 10**400),
        ("_timeout", True),
        ("_timeout", "10"),
    ],
)
def test_a_malformed_field_makes_a_problem_for_an_answerable_call(field, value):
    envelope = wire.envelope({**CALL, field: value})
    assert envelope.is_call and envelope.problem.startswith(f"{field} must be")


def test_a_valid_envelope():
    envelope = wire.envelope({**CALL, "_timeout": 30})
    assert envelope == wire.Envelope(*ADDRESS, CALL["_unique_id"], 30)
    assert not wire.envelope({"method": "cast"}).is_call
