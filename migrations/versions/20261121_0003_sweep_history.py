"""sweep history

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# Each step skips what exists: on MySQL/MariaDB, DDL commits as it goes, so an
# upgrade killed half-way leaves some of it behind, and the next upgrade must
# finish the job instead of failing with "Table ... already exists".
def _create_table(name: str, *items: Any) -> None:
    if not sa.inspect(op.get_bind()).has_table(name):
        op.create_table(name, *items)


def _create_index(name: str, table: str, columns: list[str], **kw: Any) -> None:
    if name not in {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes(table)}:
        op.create_index(name, table, columns, **kw)


def _json_default() -> sa.TextClause:
    # MySQL 8 accepts a default on a TEXT column only as an expression.
    dialect = op.get_bind().dialect
    if dialect.name == "mysql" and not getattr(dialect, "is_mariadb", False):
        return sa.text("('{}')")
    return sa.text("'{}'")


def upgrade() -> None:
    _create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("options", sa.Text(), server_default=_json_default(), nullable=False),
        sa.Column("expired", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("deleted", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("already_gone", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("skipped", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lost_creates", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    _create_index(op.f("ix_sweeps_started_at"), "sweeps", ["started_at"], unique=False)
    _create_index(
        op.f("ix_sweeps_outcome_finished_at"), "sweeps", ["outcome", "finished_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sweeps_outcome_finished_at"), table_name="sweeps")
    op.drop_index(op.f("ix_sweeps_started_at"), table_name="sweeps")
    op.drop_table("sweeps")
