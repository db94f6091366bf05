"""sweep history

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from threadstore._ddl import create_index, create_table, json_default

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("options", sa.Text(), server_default=json_default(), nullable=False),
        sa.Column("expired", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("deleted", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("already_gone", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("skipped", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("lost_creates", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    create_index(op.f("ix_sweeps_started_at"), "sweeps", ["started_at"], unique=False)
    create_index(
        op.f("ix_sweeps_outcome_finished_at"), "sweeps", ["outcome", "finished_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_sweeps_outcome_finished_at"), table_name="sweeps")
    op.drop_index(op.f("ix_sweeps_started_at"), table_name="sweeps")
    op.drop_table("sweeps")
