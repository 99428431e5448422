"""Alembic migrations of the services database; run by supervise.db.migration."""
