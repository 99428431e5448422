"""Fixtures shared by every test directory: a private PostgreSQL cluster (tests/pg.py)."""

pytest_plugins = ["tests.pg"]
