"""MySQL/MariaDB: exact string collation, LONGTEXT, microsecond datetimes

0.1 created MySQL tables with the database's default collation (usually
case- and trailing-space-insensitive: ``--user alice`` matched ``Alice`` and
``alice ``), ``TEXT`` (64 KiB at most) and ``DATETIME`` (whole seconds: rows
created in the same second came back out of order). This brings every string
column to ``utf8mb4`` with a binary NO PAD collation (``utf8mb4_nopad_bin`` on
MariaDB, ``utf8mb4_0900_bin`` on MySQL 8), every text column to ``LONGTEXT`` and
every datetime to ``DATETIME(6)``, in every threadstore table that exists at this
revision. Other backends: nothing to do.

Every step checks or sets the final state (foreign keys dropped only if present
and made again only if missing; ``MODIFY`` to the final type), so running it
again after a crash half-way (MySQL cannot roll DDL back) finishes the job.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("threads", "messages", "runs", "deletions", "assistants", "run_steps", "sweeps")
# The children's foreign keys to threads.thread_id: MySQL will not change the
# collation of a column a foreign key uses, so they are dropped and made again.
FOREIGN_KEYS = {
    "messages": "fk_messages_thread_id_threads",
    "runs": "fk_runs_thread_id_threads",
    "run_steps": "fk_run_steps_thread_id_threads",
}
# Server defaults of the columns this changes (all others have none).
DEFAULTS = {"metadata": "'{}'", "options": "'{}'", "status": "'active'"}


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name not in ("mysql", "mariadb"):
        return
    mariadb = getattr(bind.dialect, "is_mariadb", False)
    # Binary and NO PAD: 'alice' and 'alice ' differ (utf8mb4_bin would pad).
    charset = "CHARACTER SET utf8mb4 COLLATE " + (
        "utf8mb4_nopad_bin" if mariadb else "utf8mb4_0900_bin"
    )
    inspector = sa.inspect(bind)
    present = [t for t in TABLES if inspector.has_table(t)]
    for table, name in FOREIGN_KEYS.items():
        if table in present and name in _foreign_keys(table):
            op.drop_constraint(name, table, type_="foreignkey")
    for table in present:
        specs = [
            spec
            for column in sa.inspect(bind).get_columns(table)
            if (spec := _modify(column, charset, mariadb=mariadb)) is not None
        ]
        op.execute(f"ALTER TABLE `{table}` DEFAULT {charset}, " + ", ".join(specs))
    for table, name in FOREIGN_KEYS.items():
        if table in present and name not in _foreign_keys(table):
            op.create_foreign_key(
                name, table, "threads", ["thread_id"], ["thread_id"], ondelete="CASCADE"
            )


def _modify(column: dict[str, Any], charset: str, *, mariadb: bool) -> str | None:
    """The ``MODIFY`` clause that gives ``column`` its final type, or None to keep it."""
    kind = type(column["type"]).__name__.upper()
    if kind in ("VARCHAR", "CHAR"):
        type_ = f"VARCHAR({column['type'].length}) {charset}"
    elif kind.endswith("TEXT"):
        type_ = f"LONGTEXT {charset}"
    elif kind in ("DATETIME", "TIMESTAMP"):
        type_ = "DATETIME(6)"
    else:
        return None
    spec = f"MODIFY `{column['name']}` {type_} {'NULL' if column['nullable'] else 'NOT NULL'}"
    default = DEFAULTS.get(column["name"]) if column.get("default") is not None else None
    if default is not None:
        # MySQL 8 takes a TEXT column's default only as an expression.
        text_default = type_.startswith("LONGTEXT") and not mariadb
        spec += f" DEFAULT ({default})" if text_default else f" DEFAULT {default}"
    return spec


def _foreign_keys(table: str) -> set[str]:
    return {fk["name"] for fk in sa.inspect(op.get_bind()).get_foreign_keys(table)}


def downgrade() -> None:
    # Nothing: the older types would drop microseconds and could make exact ids that
    # differ only in case or trailing spaces collide; older code reads the wider types.
    pass
