"""assistants and run steps; tool calls on runs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from threadstore._ddl import create_index, create_table, json_default

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_table(
        "assistants",
        sa.Column("assistant_id", sa.String(length=64), nullable=False),
        sa.Column("workspace", sa.String(length=255), nullable=True),
        sa.Column("name", sa.String(length=255), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("instructions", sa.Text(), nullable=True),
        sa.Column("tools", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), server_default=json_default(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("assistant_id", name=op.f("pk_assistants")),
    )
    create_index(op.f("ix_assistants_created_at"), "assistants", ["created_at"], unique=False)
    create_index(
        op.f("ix_assistants_workspace_created_at"),
        "assistants",
        ["workspace", "created_at"],
        unique=False,
    )
    create_table(
        "run_steps",
        sa.Column("step_id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("assistant_id", sa.String(length=64), nullable=True),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=True),
        sa.Column("tool_calls", sa.Text(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("total_tokens", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.thread_id"],
            name=op.f("fk_run_steps_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("step_id", name=op.f("pk_run_steps")),
    )
    create_index(op.f("ix_run_steps_created_at"), "run_steps", ["created_at"], unique=False)
    create_index(op.f("ix_run_steps_run_id"), "run_steps", ["run_id"], unique=False)
    create_index(
        op.f("ix_run_steps_thread_id_created_at"),
        "run_steps",
        ["thread_id", "created_at"],
        unique=False,
    )
    if "tool_calls" not in {c["name"] for c in sa.inspect(op.get_bind()).get_columns("runs")}:
        with op.batch_alter_table("runs") as batch:
            batch.add_column(sa.Column("tool_calls", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("tool_calls")
    # Dropping a table drops its indexes; dropping them first fails on MySQL, where
    # run_steps' foreign key needs its thread_id index.
    op.drop_table("run_steps")
    op.drop_table("assistants")
