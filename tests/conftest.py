"""Fixtures shared by every test directory: a private PostgreSQL cluster (tests/pg.py), a
private RabbitMQ node (tests/rabbit_node.py) and the database on each backend
(tests/db_backends.py), and hosts in network namespaces (tests/netns.py)."""

pytest_plugins = ["tests.pg", "tests.rabbit_node", "tests.db_backends", "tests.netns"]
