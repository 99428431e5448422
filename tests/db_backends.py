"""The services database on each backend, for tests that must hold on both.

`database_url` is parametrised: an SQLite file in the test's tmp_path, and a new database
of the session's private PostgreSQL cluster (tests/pg.py); `database` is a `Database` on
it, synced to the head revision, closed afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from supervise.db import Database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'state' / 'supervise.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    db = Database(database_url)
    db.sync()
    yield db
    db.close()
