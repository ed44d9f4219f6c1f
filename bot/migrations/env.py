"""Alembic environment: runs the migrations on the connection that `bot.adapters.store.migrate` hands over."""

from __future__ import annotations

from alembic import context

from bot.adapters.store import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through bot.adapters.store.migrate(url); there is no alembic.ini")

# Batch mode lets later migrations alter SQLite tables, which SQLite can only do by copying them.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  compare_type=True)
with context.begin_transaction():
    context.run_migrations()
