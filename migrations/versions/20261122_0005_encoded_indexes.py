"""partial indexes of encoded rows (SQLite, PostgreSQL)

An export takes its fast path (the database renders the lines) only if no value
in its selection is stored encoded — encrypted, or plain text escaped because
it began like a token — and asked that by reading the whole table: about 0.2 s
per million messages, before the first row. Each table with values stored
through the codec gets a partial index of just the rows holding one: empty on a
store without encryption, so the question reads an empty index. Writes pay one
predicate check per row (and, on an encrypted store, one index entry).

MySQL and MariaDB have no partial indexes: nothing to do there (they scan).
The predicates are the models' (``threadstore.models.encoded_values``), written
out here so that this revision does not change when the models do.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from threadstore._ddl import create_index

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIALECTS = ("sqlite", "postgresql")
PREFIXES = ("fernet:", "plain:")
# table: (its id column, the columns stored through the codec, in the models' order)
ENCODED = {
    "threads": ("thread_id", ("metadata",)),
    "messages": ("message_id", ("content", "metadata")),
    "runs": ("run_id", ("tool_calls",)),
    "run_steps": ("step_id", ("tool_calls", "last_error")),
    "assistants": ("assistant_id", ("description", "instructions", "tools", "metadata")),
}


def _predicate(columns: Sequence[str]) -> sa.ColumnElement[bool]:
    return sa.or_(
        *(
            sa.column(c).like(sa.literal_column(f"'{p}%'"))
            for c in columns
            for p in PREFIXES
        )
    )


def upgrade() -> None:
    if op.get_bind().dialect.name not in DIALECTS:
        return
    for table, (id_column, columns) in ENCODED.items():
        where = _predicate(columns)
        create_index(
            f"ix_{table}_encoded",
            table,
            [id_column],
            unique=False,
            sqlite_where=where,
            postgresql_where=where,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name not in DIALECTS:
        return
    for table in ENCODED:
        op.drop_index(f"ix_{table}_encoded", table_name=table)
