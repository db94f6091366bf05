"""Schema steps for the Alembic migrations, written once for every revision.

Each step skips what already exists: on MySQL/MariaDB, DDL commits as it goes, so
an upgrade killed half-way leaves part of it behind, and the next upgrade must
finish the job instead of failing with "Table ... already exists". The migration
scripts (``migrations/versions``) import these; the rest of threadstore does not.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

__all__ = ["create_index", "create_table", "json_default"]


def create_table(name: str, *items: Any) -> None:
    """``op.create_table`` unless the table exists."""
    if not sa.inspect(op.get_bind()).has_table(name):
        op.create_table(name, *items)


def create_index(name: str, table: str, columns: list[str], **kw: Any) -> None:
    """``op.create_index`` unless an index of that name exists on ``table``."""
    if name not in {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(table)}:
        op.create_index(name, table, columns, **kw)


def json_default() -> sa.TextClause:
    """The ``'{}'`` server default of a JSON text column, as the backend accepts it.

    MySQL 8 takes a default on a TEXT column only as an expression; MariaDB and the
    others take the plain literal, which is what 0.1 stores already have.
    """
    dialect = op.get_bind().dialect
    if dialect.name == "mysql" and not getattr(dialect, "is_mariadb", False):
        return sa.text("('{}')")
    return sa.text("'{}'")
