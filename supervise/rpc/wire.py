"""The oslo.messaging 2.0 wire format, JSON only.

An AMQP body is the envelope ``{"oslo.version": "2.0", "oslo.message": "<JSON string>"}``;
the inner message is an object. A call carries ``method``, ``args``, optional ``namespace``
and ``version``, ``_unique_id``, the caller's context flattened into ``_context_<key>``
entries, and ``_msg_id``, ``_reply_q``, ``_timeout``. A reply carries ``result``,
``failure`` (a JSON string made by `serialize_failure`, or null), ``ending``, ``_msg_id``
and ``_unique_id``.

Only JSON is ever decoded: kombu would happily unpickle an ``application/x-python-serialize``
body, which runs whatever code the sender chose, so `decode` takes the raw body and its
content type and refuses everything that is not JSON.
"""

from __future__ import annotations

import bz2
import datetime
import json
import re
import traceback
import uuid
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

VERSION = "2.0"
VERSION_KEY = "oslo.version"
MESSAGE_KEY = "oslo.message"
CONTEXT_PREFIX = "_context_"
JSON_CONTENT_TYPE = "application/json"
# oslo strips this from a re-raised remote exception so the next caller can rebuild it.
_REMOTE_POSTFIX = "_Remote"
_SHOWN_CHARS = 80


class WireError(Exception):
    """A message we cannot read; the message is one line naming why."""


class MessageTooLarge(WireError):
    """A message over ``max_message_size``, refused before it is parsed."""


def _show(value: object) -> str:
    """A short one-line repr of an untrusted value, for error messages."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def encode(message: Mapping[str, Any]) -> dict[str, str]:
    """The envelope for `message`; kombu serializes it as the application/json body."""
    return {VERSION_KEY: VERSION, MESSAGE_KEY: json.dumps(message, default=_primitive)}


def _primitive(value: Any) -> Any:
    """The few types oslo's to_primitive also turns into JSON: times as ISO 8601 text, sets
    as lists, UUIDs as text. Anything else is an error the caller turns into a failure."""
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def decode(
    body: bytes | str | dict,
    content_type: str | None,
    max_size: int,
    compression: str | None = None,
) -> dict[str, Any]:
    """The inner message of a raw AMQP body, or WireError.

    The size limit applies to the body as it arrived, before anything is parsed, and again
    to what it decompresses to (``compression`` is the message's header of that name).
    A missing content type is accepted when the body is JSON (some publishers omit it).
    An object without envelope keys is returned as is, as oslo does for pre-envelope
    messages; an object with only one of the two envelope keys is refused.
    """
    _check_content_type(content_type)
    data = _bytes(body)
    _check_size(len(data), max_size)
    if compression:
        data = _decompress(data, compression, max_size)
    outer = _load_object(data, "body")
    if VERSION_KEY not in outer and MESSAGE_KEY not in outer:
        return outer
    version = outer.get(VERSION_KEY)
    if version != VERSION:
        raise WireError(f"unsupported {VERSION_KEY} {_show(version)} (only {VERSION!r})")
    inner = outer.get(MESSAGE_KEY)
    if not isinstance(inner, str):
        raise WireError(f"{MESSAGE_KEY} must be a JSON string, got {type(inner).__name__}")
    return _load_object(inner, MESSAGE_KEY)


def _check_content_type(content_type: str | None) -> None:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in ("", JSON_CONTENT_TYPE):
        raise WireError(f"refusing content type {_show(content_type)}: only {JSON_CONTENT_TYPE}")


def _bytes(body: bytes | str | dict) -> bytes:
    if isinstance(body, dict):  # built in this process (`encode`), never off the wire
        return json.dumps(body).encode()
    if isinstance(body, str):  # a transport that decoded it already; keep what cannot encode
        return body.encode(errors="surrogatepass")
    return bytes(body)


def _check_size(size: int, max_size: int) -> None:
    if size > max_size:
        raise MessageTooLarge(f"a message of {size} bytes is over max_message_size ({max_size})")


# kombu's codecs, by the names its `compression` header uses (oslo's kombu_compression).
_DECOMPRESSORS: dict[str, Callable[[], Any]] = {
    "application/x-gzip": zlib.decompressobj,
    "zlib": zlib.decompressobj,
    "gzip": zlib.decompressobj,
    "application/x-bz2": bz2.BZ2Decompressor,
    "bzip2": bz2.BZ2Decompressor,
    "bzip": bz2.BZ2Decompressor,
}


def _decompress(data: bytes, compression: object, max_size: int) -> bytes:
    """`data` decompressed, reading no more than `max_size` + 1 bytes of output."""
    factory = _DECOMPRESSORS.get(compression) if isinstance(compression, str) else None
    if factory is None:
        raise WireError(f"unsupported compression {_show(compression)}")
    try:
        output = factory().decompress(data, max_size + 1)
    except (zlib.error, OSError, ValueError, EOFError) as error:
        raise WireError(f"cannot decompress the body ({compression}): {error}") from None
    _check_size(len(output), max_size)
    return output


def _load_object(data: bytes | str, what: str) -> dict[str, Any]:
    loaded = _parse_json(data, what)
    if not isinstance(loaded, dict):
        raise WireError(f"{what} is a JSON {type(loaded).__name__}, not an object")
    return loaded


def _parse_json(data: bytes | str, what: str) -> object:
    try:
        return json.loads(data)
    except RecursionError:
        raise WireError(f"{what} is JSON nested too deeply") from None
    except ValueError as error:  # JSONDecodeError and UnicodeDecodeError
        raise WireError(f"{what} is not valid JSON: {error}") from None


# A JSON string, or one of the characters that give a JSON text its structure.
_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[][{},:]')
_MAX_ADDRESS_CHARS = 1024  # a reply address field longer than this is not one


def reply_address(body: bytes | str) -> tuple[object, object] | None:
    """(``_msg_id``, ``_reply_q``) of an uncompressed body that `decode` refused, read
    without parsing the rest (so with bounded memory and no recursion, whatever its size or
    depth), for an error reply; None if the body does not hold both as strings."""
    try:
        text = _bytes(body).decode(errors="surrogateescape")  # bad UTF-8 elsewhere is fine
        members = _string_members(text)
        if MESSAGE_KEY in members:
            text = json.loads(text[slice(*members[MESSAGE_KEY])])
            members = _string_members(text)
        spans = [members.get(key) for key in ("_msg_id", "_reply_q")]
        if any(span is None or span[1] - span[0] > _MAX_ADDRESS_CHARS for span in spans):
            return None
        return json.loads(text[slice(*spans[0])]), json.loads(text[slice(*spans[1])])
    except ValueError:  # a string that is not JSON
        return None


def _string_members(text: str) -> dict[str, tuple[int, int]]:
    """The members of the JSON object `text` whose values are strings, as key -> where the
    value's JSON text is; other values are skipped, not built."""
    if not text.lstrip().startswith("{"):
        return {}
    members: dict[str, tuple[int, int]] = {}
    depth, key, expecting_key = 0, None, False
    for match in _TOKEN.finditer(text):
        start, end = match.span()
        char = text[start]
        if char in "[{":
            depth += 1
            expecting_key = depth == 1
        elif char in "]}":
            depth -= 1
        elif depth != 1:
            continue
        elif char == ",":
            expecting_key, key = True, None
        elif char == ":":
            expecting_key = False
        elif expecting_key:
            key = json.loads(text[start:end]) if end - start <= _MAX_ADDRESS_CHARS else None
        elif isinstance(key, str):
            members.setdefault(key, (start, end))
    return members


MAX_FIELD_BYTES = 255  # an AMQP short string: what a queue name can be
MAX_TIMEOUT = 1e9


@dataclass(frozen=True)
class Envelope:
    """What the transport reads of an inner message, validated before anything uses it.
    A call has both `msg_id` and `reply_queue`; `problem` says why the message must be
    refused (its caller, if any, is told)."""

    msg_id: str | None = None
    reply_queue: str | None = None
    unique_id: str | None = None
    timeout: float | None = None
    problem: str | None = None

    @property
    def is_call(self) -> bool:
        return self.msg_id is not None and self.reply_queue is not None


def envelope(inner: Mapping[str, Any]) -> Envelope:
    """The envelope of an inner message; WireError if its reply address (``_msg_id``,
    ``_reply_q``) is malformed, since then nobody can be told."""
    msg_id = _short_string(inner.get("_msg_id"), "_msg_id")
    reply_queue = _short_string(inner.get("_reply_q"), "_reply_q")
    try:
        unique_id = _short_string(inner.get("_unique_id"), "_unique_id")
        timeout = _timeout(inner.get("_timeout"))
    except WireError as error:
        return Envelope(msg_id, reply_queue, problem=str(error))
    return Envelope(msg_id, reply_queue, unique_id, timeout)


def _short_string(value: object, name: str) -> str | None:
    if value is None or (isinstance(value, str) and _encodes_within(value, MAX_FIELD_BYTES)):
        return value
    raise WireError(
        f"{name} must be a string of 1 to {MAX_FIELD_BYTES} bytes of UTF-8, got {_show(value)}"
    )


def _encodes_within(text: str, max_bytes: int) -> bool:
    if not 0 < len(text) <= max_bytes:
        return False
    try:
        return len(text.encode()) <= max_bytes
    except UnicodeEncodeError:  # a lone surrogate
        return False


def _timeout(value: object) -> float | None:
    # Comparisons, unlike float(), work for any int and are false for NaN.
    if value is None or (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and -MAX_TIMEOUT <= value <= MAX_TIMEOUT
    ):
        return value
    raise WireError(f"_timeout must be a finite number or null, got {_show(value)}")


def new_unique_id() -> str:
    return uuid.uuid4().hex


def pack_context(context: Mapping[str, Any]) -> dict[str, Any]:
    """The context as message entries, one ``_context_<key>`` per key."""
    return {f"{CONTEXT_PREFIX}{key}": value for key, value in context.items()}


def unpack_context(message: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(context, the rest of the message), without changing `message`.

    Unlike oslo, which also moves ``_msg_id``, ``_reply_q`` and ``_timeout`` into its
    context object, those stay in the rest, where the transport reads them.
    """
    context: dict[str, Any] = {}
    rest: dict[str, Any] = {}
    for key, value in message.items():
        if key.startswith(CONTEXT_PREFIX):
            context[key[len(CONTEXT_PREFIX) :]] = value
        else:
            rest[key] = value
    return context, rest


def reply(msg_id: str, result: Any = None, failure: str | None = None) -> dict[str, Any]:
    """The single reply to a call, as oslo.messaging sends it (``ending`` true)."""
    return {
        "result": result,
        "failure": failure,
        "ending": True,
        "_msg_id": msg_id,
        "_unique_id": new_unique_id(),
    }


def heartbeat(msg_id: str) -> dict[str, Any]:
    """oslo's call-monitor heartbeat: a reply that is not the end (``ending`` false)."""
    return {
        "result": None,
        "failure": None,
        "ending": False,
        "_msg_id": msg_id,
        "_unique_id": new_unique_id(),
    }


def serialize_failure(error: BaseException) -> str:
    """The JSON string oslo puts in a reply's ``failure``.

    ``tb`` is `traceback.format_exception` output (chunks ending in a newline), as oslo
    sends it. oslo rebuilds the exception from ``args`` and ``kwargs`` when the module is
    one the caller allows, so they are kept, made JSON-safe value by value.
    """
    cls = type(error)
    name, module = cls.__name__, cls.__module__
    if name.endswith(_REMOTE_POSTFIX) and module.endswith(_REMOTE_POSTFIX):
        name, module = name[: -len(_REMOTE_POSTFIX)], module[: -len(_REMOTE_POSTFIX)]
    kwargs = getattr(error, "kwargs", None)
    return json.dumps(
        {
            "class": name,
            "module": module,
            "message": _safe_str(error),
            "tb": traceback.format_exception(error),
            "args": [_json_safe(arg) for arg in error.args],
            "kwargs": (
                {_safe_str(k): _json_safe(v) for k, v in kwargs.items()}
                if isinstance(kwargs, Mapping)
                else {}
            ),
        }
    )


def _safe_str(value: object) -> str:
    try:
        return str(value)
    except Exception:
        return f"<unprintable {type(value).__name__} object>"


def _json_safe(value: Any) -> Any:
    """`value` as JSON would carry it; objects JSON cannot take become their str()."""
    try:
        return json.loads(json.dumps(value, default=_safe_str))
    except (TypeError, ValueError, RecursionError):  # non-str keys, cycles, deep nesting
        return _safe_str(value)


class RemoteError(Exception):
    """An exception raised by the remote endpoint of a call, as oslo names its parts."""

    def __init__(
        self, exc_type: str | None = None, value: str | None = None, traceback: str | None = None
    ) -> None:
        super().__init__(exc_type, value, traceback)
        self.exc_type = exc_type
        self.value = value
        self.traceback = traceback

    def __str__(self) -> str:
        return f"Remote error: {self.exc_type} {self.value}\n{self.traceback}"


def deserialize_failure(data: str) -> RemoteError:
    """The RemoteError a reply's ``failure`` describes; never raises.

    Unreadable data gives a RemoteError with no type whose value is the data itself.
    """
    text = data.decode(errors="replace") if isinstance(data, bytes) else _safe_str(data)
    try:
        failure = json.loads(text)
    except (ValueError, RecursionError):
        failure = None
    if not isinstance(failure, dict):
        return RemoteError(None, text, "")
    name = failure.get("class")
    return RemoteError(
        None if name is None else _safe_str(name),
        _text(failure.get("message")),
        _traceback_text(failure.get("tb")),
    )


def _traceback_text(tb: object) -> str:
    if isinstance(tb, list):
        return "\n".join(_text(chunk).rstrip("\n") for chunk in tb)
    return _text(tb)


def _text(value: object) -> str:
    return "" if value is None else _safe_str(value)
