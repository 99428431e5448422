"""supervise.rpc.dispatcher: endpoint selection by namespace and version, what an endpoint
exposes, argument checking, context passing, and nova's baseapi ping."""

from __future__ import annotations

import dataclasses
import functools

import pytest

from supervise.rpc import wire
from supervise.rpc.dispatcher import (
    BaseAPI,
    Dispatcher,
    DispatchError,
    InvalidArguments,
    InvalidMessage,
    NoSuchMethod,
    Target,
    UnsupportedVersion,
    version_is_compatible,
)


def call(method, args=None, namespace=None, version=None, context=None, **extra):
    """An inner message as an oslo RPCClient builds it (namespace/version only when set)."""
    message = {"method": method, "args": {} if args is None else args, **extra}
    if namespace is not None:
        message["namespace"] = namespace
    if version is not None:
        message["version"] = version
    message.update(wire.pack_context(context or {}))
    return message


def raises_one_line(kind, dispatcher, message):
    with pytest.raises(kind) as caught:
        dispatcher.dispatch(message)
    text = str(caught.value)
    assert text
    assert "\n" not in text
    return caught.value


# Targets and versions


def test_target_defaults_and_is_frozen():
    target = Target()
    assert dataclasses.astuple(target) == (None, None, None, None, None, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        target.version = "2.0"
    assert Target(topic="compute", server="host1") == Target(topic="compute", server="host1")


@pytest.mark.parametrize(
    ("available", "requested", "compatible"),
    [
        ("1.0", "1.0", True),
        ("1.1", "1.0", True),
        ("1.10", "1.9", True),
        ("1.9", "1.10", False),
        ("1.0", "1.1", False),
        ("2.0", "1.0", False),
        ("1.5", "2.0", False),
        ("2.3", "2.3", True),
        ("1.2", "1.2.0", True),
        ("1.2.1", "1.2", True),
        ("1.2", "1.2.1", False),
        ("1.2.3", "1.2.4", False),
        ("1.2.5", "1.2.4", True),
        ("1.3", "1.2.9", True),
        ("1.3.0", "1.2.9", True),
        ("10.0", "1.0", False),
    ],
)
def test_version_is_compatible(available, requested, compatible):
    assert version_is_compatible(available, requested) is compatible


def test_version_is_compatible_agrees_with_oslo():
    pytest.importorskip(
        "oslo_messaging", reason="oslo.messaging is not installed: pip install oslo.messaging"
    )
    from oslo_messaging._utils import version_is_compatible as oslos

    versions = ["1.0", "1.1", "1.2", "1.2.0", "1.2.1", "1.2.7", "1.10", "2.0", "2.0.1", "2.5"]
    for available in versions:
        for requested in versions:
            assert version_is_compatible(available, requested) == oslos(available, requested), (
                available,
                requested,
            )


@pytest.mark.parametrize(
    "bad", ["1", "", "a.b", "1.x", "1.0.0.0", " 1.0", "1.0 ", "\u0661.0", "-1.0"]
)
def test_malformed_versions_raise_value_error(bad):
    with pytest.raises(ValueError):
        version_is_compatible(bad, "1.0")
    with pytest.raises(ValueError):
        version_is_compatible("1.0", bad)


# Endpoint selection


class Default:
    """No target: namespace None, version 1.0."""

    def echo(self, context, value):
        return ("default", value)


class V12:
    target = Target(version="1.2")

    def echo(self, context, value):
        return ("v1.2", value)

    def only_v12(self, context):
        return "only_v12"


class V2:
    target = Target(version="2.0")

    def echo(self, context, value):
        return ("v2.0", value)


class Other:
    target = Target(namespace="other", version="1.5")

    def echo(self, context, value):
        return ("other", value)


@pytest.fixture
def dispatcher():
    return Dispatcher([Default(), V12(), V2(), Other()])


@pytest.mark.parametrize(
    ("namespace", "version", "method", "expected"),
    [
        (None, None, "echo", "default"),
        (None, "1.0", "echo", "default"),
        (None, "1.1", "echo", "v1.2"),
        (None, "1.2", "echo", "v1.2"),
        (None, "1.2.0", "echo", "v1.2"),
        (None, "1.2.1", "echo", UnsupportedVersion),
        (None, "1.3", "echo", UnsupportedVersion),
        (None, "2.0", "echo", "v2.0"),
        (None, "2.1", "echo", UnsupportedVersion),
        (None, "3.0", "echo", UnsupportedVersion),
        ("other", None, "echo", "other"),
        ("other", "1.5", "echo", "other"),
        ("other", "1.6", "echo", UnsupportedVersion),
        ("other", "2.0", "echo", UnsupportedVersion),
        ("missing", "1.0", "echo", NoSuchMethod),
        (None, "1.0", "only_v12", "only_v12"),
        (None, "1.3", "only_v12", UnsupportedVersion),
        (None, "2.0", "only_v12", UnsupportedVersion),
        ("other", "1.0", "only_v12", NoSuchMethod),
        (None, "1.0", "nope", NoSuchMethod),
        (None, "9.0", "nope", NoSuchMethod),
    ],
)
def test_selection(dispatcher, namespace, version, method, expected):
    args = {} if method == "only_v12" else {"value": 7}
    message = call(method, args, namespace=namespace, version=version)
    if isinstance(expected, type):
        raises_one_line(expected, dispatcher, message)
    elif method == "echo":
        assert dispatcher.dispatch(message) == (expected, 7)
    else:
        assert dispatcher.dispatch(message) == expected


def test_the_first_compatible_endpoint_wins():
    class Tagged:
        def __init__(self, tag):
            self.tag = tag

        def echo(self, context, value):
            return self.tag

    dispatcher = Dispatcher([Tagged("first"), Tagged("second")])
    assert dispatcher.dispatch(call("echo", {"value": 1})) == "first"


def test_error_messages_match_oslos_wording(dispatcher):
    missing = raises_one_line(NoSuchMethod, dispatcher, call("nope"))
    assert str(missing) == "Endpoint does not support RPC method 'nope'"
    assert missing.method == "nope"
    unsupported = raises_one_line(UnsupportedVersion, dispatcher, call("echo", version="3.0"))
    assert str(unsupported) == (
        "Endpoint does not support RPC version '3.0'. Attempted method: 'echo'"
    )
    assert (unsupported.version, unsupported.method) == ("3.0", "echo")


def test_all_dispatch_errors_share_a_base(dispatcher):
    for kind in (NoSuchMethod, UnsupportedVersion, InvalidArguments, InvalidMessage):
        assert issubclass(kind, DispatchError)


def test_no_endpoints_means_no_such_method():
    raises_one_line(NoSuchMethod, Dispatcher([]), call("echo"))


def test_an_endpoint_target_without_version_is_1_0():
    class Unversioned:
        target = Target(namespace="ns")

        def echo(self, context):
            return "ok"

    dispatcher = Dispatcher([Unversioned()])
    assert dispatcher.dispatch(call("echo", namespace="ns", version="1.0")) == "ok"
    raises_one_line(UnsupportedVersion, dispatcher, call("echo", namespace="ns", version="1.1"))


def test_an_endpoint_target_that_is_not_a_target_is_refused():
    class Bad:
        def target(self, context):
            return "I shadow the reserved attribute"

    with pytest.raises(TypeError, match="must be a Target"):
        Dispatcher([Bad()])


def test_an_endpoint_target_with_a_malformed_version_is_refused():
    class Bad:
        target = Target(version="one")

    with pytest.raises(ValueError, match="not a version"):
        Dispatcher([Bad()])


# What an endpoint exposes


class Exposing:
    target = Target(version="2.0")

    def __init__(self):
        self.calls = []
        self.handler = lambda context: "instance attribute"

    def public(self, context):
        self.calls.append("public")
        return "public"

    def _private(self, context):
        self.calls.append("_private")
        return "private"

    def __secret(self, context):
        self.calls.append("__secret")

    @staticmethod
    def static(context):
        return "static"

    @classmethod
    def klass(cls, context):
        return "classmethod"

    @property
    def prop(self):
        self.calls.append("prop")
        return lambda context: "property"

    callable_attribute = functools.partial(print)
    nested_class = Default

    def __getattr__(self, name):
        self.calls.append(f"__getattr__({name})")
        return lambda context: "dynamic"


@pytest.mark.parametrize(
    "method",
    [
        "_private",
        "_Exposing__secret",
        "__init__",
        "__class__",
        "__getattr__",
        "__dict__",
        "_",
        "__",
    ],
)
@pytest.mark.parametrize("version", ["2.0", "3.0", "1.0"])
def test_private_names_are_indistinguishable_from_missing_ones(method, version):
    endpoint = Exposing()
    dispatcher = Dispatcher([endpoint])
    private = raises_one_line(NoSuchMethod, dispatcher, call(method, version=version))
    missing = raises_one_line(NoSuchMethod, dispatcher, call("x" + method, version=version))
    assert type(private) is type(missing)
    assert str(private) == f"Endpoint does not support RPC method {method!r}"
    assert endpoint.calls == []


@pytest.mark.parametrize(
    "method",
    [
        "handler",
        "static",
        "klass",
        "prop",
        "callable_attribute",
        "nested_class",
        "target",
        "dynamic",
    ],
)
def test_only_functions_of_the_class_are_exposed(method):
    endpoint = Exposing()
    dispatcher = Dispatcher([endpoint])
    raises_one_line(NoSuchMethod, dispatcher, call(method, version="2.0"))
    assert endpoint.calls == [], "looking a method up must not run endpoint code"


def test_public_methods_are_exposed():
    endpoint = Exposing()
    assert Dispatcher([endpoint]).dispatch(call("public", version="2.0")) == "public"
    assert endpoint.calls == ["public"]


def test_inherited_methods_are_exposed_and_overrides_can_hide_them():
    class Child(Default):
        pass

    class Hiding(Default):
        echo = None

    assert Dispatcher([Child()]).dispatch(call("echo", {"value": 1})) == ("default", 1)
    raises_one_line(NoSuchMethod, Dispatcher([Hiding()]), call("echo", {"value": 1}))


def test_an_instance_attribute_does_not_shadow_the_class_method():
    endpoint = Default()
    endpoint.echo = lambda context, value: "shadow"
    assert Dispatcher([endpoint]).dispatch(call("echo", {"value": 1})) == ("default", 1)


def test_decorated_methods_are_exposed_with_their_signature():
    def logged(function):
        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            return ("logged", function(*args, **kwargs))

        return wrapper

    class Decorated:
        @logged
        def echo(self, context, value):
            return value

    dispatcher = Dispatcher([Decorated()])
    assert dispatcher.dispatch(call("echo", {"value": 3})) == ("logged", 3)
    raises_one_line(InvalidArguments, dispatcher, call("echo", {"valeu": 3}))


# Malformed messages


@pytest.mark.parametrize(
    "message",
    [
        {},
        {"args": {}},
        {"method": ""},
        {"method": None},
        {"method": 5},
        {"method": ["echo"]},
        {"method": "echo", "args": None},
        {"method": "echo", "args": []},
        {"method": "echo", "args": "value=1"},
        {"method": "echo", "args": {1: "int key"}},
        {"method": "echo", "namespace": 5},
        {"method": "echo", "namespace": ["ns"]},
        {"method": "echo", "version": None},
        {"method": "echo", "version": 1.0},
        {"method": "echo", "version": "1"},
        {"method": "echo", "version": "latest"},
        {"method": "echo", "version": "1.0\nforged"},
    ],
)
def test_malformed_messages_are_invalid(dispatcher, message):
    raises_one_line(InvalidMessage, dispatcher, message)


def test_a_huge_method_name_is_shortened_in_the_error(dispatcher):
    error = raises_one_line(NoSuchMethod, dispatcher, call("m" * 10_000))
    assert len(str(error)) < 200


# Arguments


class Arguments:
    def __init__(self):
        self.calls = []

    def two(self, context, a, b=2):
        self.calls.append((a, b))
        return a + b

    def anything(self, context, *args, **kwargs):
        return kwargs

    def no_context(self):
        self.calls.append("no_context")

    def raises_type_error(self, context, value):
        return len(value)


@pytest.fixture
def arguments():
    return Arguments()


@pytest.mark.parametrize(
    ("args", "result"),
    [({"a": 1}, 3), ({"a": 1, "b": 5}, 6), ({"b": 5, "a": 1}, 6)],
)
def test_arguments_are_passed_by_name(arguments, args, result):
    assert Dispatcher([arguments]).dispatch(call("two", args)) == result


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({}, "missing a required argument: 'a'"),
        ({"b": 1}, "missing a required argument: 'a'"),
        ({"a": 1, "c": 3}, "unexpected keyword argument 'c'"),
        ({"a": 1, "context": {}}, "multiple values for argument 'context'"),
        ({"a": 1, "bad\nname": 3}, "unexpected keyword argument 'bad\\nname'"),
    ],
)
def test_wrong_arguments_are_invalid_and_the_method_is_not_called(arguments, args, reason):
    error = raises_one_line(InvalidArguments, Dispatcher([arguments]), call("two", args))
    assert str(error).startswith("RPC method 'two': ")
    assert reason in str(error)
    assert arguments.calls == []


def test_a_method_without_a_context_parameter_is_invalid_arguments(arguments):
    raises_one_line(InvalidArguments, Dispatcher([arguments]), call("no_context"))
    assert arguments.calls == []


def test_var_keyword_methods_take_any_argument_name(arguments):
    args = {"x": 1, "not-an-identifier": 2}
    assert Dispatcher([arguments]).dispatch(call("anything", args)) == args


def test_a_type_error_inside_the_method_propagates_unchanged(arguments):
    message = call("raises_type_error", {"value": 5})
    with pytest.raises(TypeError) as caught:
        Dispatcher([arguments]).dispatch(message)
    assert not isinstance(caught.value, DispatchError)
    assert "has no len()" in str(caught.value)
    assert caught.value.__traceback__ is not None


def test_other_exceptions_from_the_method_propagate_unchanged():
    failure = KeyError("from the endpoint")

    class Failing:
        def fail(self, context):
            raise failure

    with pytest.raises(KeyError) as caught:
        Dispatcher([Failing()]).dispatch(call("fail"))
    assert caught.value is failure


# Context


class Recorder:
    def record(self, context, **kwargs):
        return {"context": context, "args": kwargs}


def test_the_context_is_the_first_argument():
    message = call(
        "record",
        {"x": 1},
        context={"user_id": "u1", "roles": ["admin"], "request_id": "req-1"},
        _msg_id="m1",
        _reply_q="reply_q",
        _timeout=None,
        _unique_id="u" * 32,
    )
    original = dict(message)
    result = Dispatcher([Recorder()]).dispatch(message)
    assert result == {
        "context": {"user_id": "u1", "roles": ["admin"], "request_id": "req-1"},
        "args": {"x": 1},
    }
    assert message == original


def test_no_context_keys_give_an_empty_context():
    assert Dispatcher([Recorder()]).dispatch({"method": "record"}) == {"context": {}, "args": {}}


def test_a_message_decoded_from_the_wire_dispatches():
    body = wire.encode(call("record", {"x": [1]}, context={"user_id": "u1"}, _unique_id="id"))
    message = wire.decode(body, "application/json", 1 << 20)
    assert Dispatcher([Recorder()]).dispatch(message) == {
        "context": {"user_id": "u1"},
        "args": {"x": [1]},
    }


# BaseAPI


def test_baseapi_ping_answers_like_nova():
    dispatcher = Dispatcher([BaseAPI("nova-compute"), Recorder()])
    message = call("ping", {"arg": {"x": 1}}, namespace="baseapi", version="1.1")
    assert dispatcher.dispatch(message) == {"service": "nova-compute", "arg": {"x": 1}}
    assert dispatcher.dispatch(call("ping", {"arg": "a"}, namespace="baseapi")) == {
        "service": "nova-compute",
        "arg": "a",
    }


def test_baseapi_target():
    assert BaseAPI.target == Target(namespace="baseapi", version="1.1")


def test_baseapi_is_only_in_its_namespace_and_version():
    dispatcher = Dispatcher([BaseAPI("nova-compute")])
    raises_one_line(NoSuchMethod, dispatcher, call("ping", {"arg": 1}))
    raises_one_line(
        UnsupportedVersion, dispatcher, call("ping", {"arg": 1}, namespace="baseapi", version="1.2")
    )
    raises_one_line(
        UnsupportedVersion, dispatcher, call("ping", {"arg": 1}, namespace="baseapi", version="2.0")
    )
    raises_one_line(InvalidArguments, dispatcher, call("ping", namespace="baseapi"))
    raises_one_line(NoSuchMethod, dispatcher, call("service_name", namespace="baseapi"))


def test_methods_of_a_class_declaring_not_rpc_are_hidden_but_its_subclasses_are_not():
    class Framework:
        _not_rpc = True

        def init_host(self, context):
            return "hook"

    class Manager(Framework):
        def work(self, context):
            return "work"

        def init_host(self, context):  # overriding a hook does not expose it
            return "overridden hook"

    dispatcher = Dispatcher([Manager()])
    assert dispatcher.dispatch({"method": "work"}) == "work"
    with pytest.raises(NoSuchMethod):
        dispatcher.dispatch({"method": "init_host"})
