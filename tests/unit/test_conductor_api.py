"""The conductor client maps exactly the contract's remote error types back to local ones."""

from __future__ import annotations

import json

import pytest

from supervise.db import errors as db_errors
from supervise.rpc import wire
from supervise.services.conductor_api import local_error
from supervise.services.versions import TooOldComputeService


def remote(exc_type: str, message: str) -> wire.RemoteError:
    failure = json.dumps({"class": exc_type, "module": "elsewhere", "message": message, "tb": []})
    return wire.deserialize_failure(failure)


@pytest.mark.parametrize(
    "cls",
    [
        db_errors.ServiceBinaryExists,
        db_errors.ServiceTopicExists,
        db_errors.ServiceNotFound,
        db_errors.DatabaseUnavailable,
        db_errors.SchemaError,
        TooOldComputeService,
    ],
)
def test_the_contracts_types_become_local_exceptions(cls) -> None:
    error = local_error(remote(cls.__name__, "said the conductor"))
    assert type(error) is cls
    assert str(error) == "said the conductor"


@pytest.mark.parametrize("exc_type", ["NoValidHost", "ValueError", "Exception", "RemoteError"])
def test_other_types_stay_remote_errors(exc_type: str) -> None:
    error = remote(exc_type, "x")
    assert local_error(error) is error
