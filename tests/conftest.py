"""Fixtures shared by every test directory: a private PostgreSQL cluster (tests/pg.py), a
private RabbitMQ node (tests/rabbit_node.py), the database on each backend
(tests/db_backends.py), hosts in network namespaces (tests/netns.py) and a stock
oslo.messaging transport (tests/functional/oslo_clients.py)."""

pytest_plugins = [
    "tests.pg",
    "tests.rabbit_node",
    "tests.db_backends",
    "tests.netns",
    "tests.functional.oslo_clients",
]
