"""Alembic environment for threadstore.

Called two ways: from threadstore itself (``ThreadStore(url)``, ``threadstore db
...``), which passes an open connection in ``config.attributes["connection"]``;
or by a developer running ``alembic`` in a checkout, where the URL comes from
``-x url=...`` or ``THREADSTORE_DATABASE_URL``.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from threadstore.db import VERSION_TABLE, compare_server_default, include_object
from threadstore.models import metadata

config = context.config
target_metadata = metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=compare_server_default,
        include_object=include_object(connection.dialect.name),
        # Our own version table: the host application's Alembic keeps alembic_version.
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    return (
        context.get_x_argument(as_dictionary=True).get("url")
        or os.environ.get("THREADSTORE_DATABASE_URL")
        or "sqlite:///threadstore.db"
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=_url().startswith("sqlite"),
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    from threadstore.db import open_engine

    engine = open_engine(_url())
    with engine.begin() as conn:
        _configure(conn)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
