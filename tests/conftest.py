"""Fixtures shared by every test directory: a private PostgreSQL cluster (tests/pg.py) and a
private RabbitMQ node (tests/rabbit_node.py)."""

pytest_plugins = ["tests.pg", "tests.rabbit_node"]
