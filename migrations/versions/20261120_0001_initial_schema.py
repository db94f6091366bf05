"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from threadstore._ddl import create_index, create_table, json_default

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_table(
        "deletions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("workspace", sa.String(length=255), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_active", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("remote_result", sa.String(length=32), nullable=False),
        sa.Column("message_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("run_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("deleted_by", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deletions")),
    )
    create_index(op.f("ix_deletions_deleted_at"), "deletions", ["deleted_at"], unique=False)
    create_index(op.f("ix_deletions_thread_id"), "deletions", ["thread_id"], unique=False)
    create_index(
        op.f("ix_deletions_user_id_deleted_at"),
        "deletions",
        ["user_id", "deleted_at"],
        unique=False,
    )
    create_index(
        op.f("ix_deletions_workspace_deleted_at"),
        "deletions",
        ["workspace", "deleted_at"],
        unique=False,
    )

    create_table(
        "threads",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("workspace", sa.String(length=255), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_active", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", sa.Text(), server_default=json_default(), nullable=False),
        sa.Column(
            "status", sa.String(length=16), server_default=sa.text("'active'"), nullable=False
        ),
        sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("ttl_seconds", sa.BigInteger(), nullable=True),
        sa.Column("ttl_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("thread_id", name=op.f("pk_threads")),
    )
    create_index(op.f("ix_threads_last_active"), "threads", ["last_active"], unique=False)
    create_index(
        op.f("ix_threads_lease_expires_at"), "threads", ["lease_expires_at"], unique=False
    )
    create_index(
        op.f("ix_threads_next_attempt_at"), "threads", ["next_attempt_at"], unique=False
    )
    create_index(op.f("ix_threads_status"), "threads", ["status"], unique=False)
    create_index(op.f("ix_threads_ttl_expires_at"), "threads", ["ttl_expires_at"], unique=False)
    create_index(
        op.f("ix_threads_user_id_last_active"), "threads", ["user_id", "last_active"], unique=False
    )
    create_index(
        op.f("ix_threads_workspace_last_active"),
        "threads",
        ["workspace", "last_active"],
        unique=False,
    )

    create_table(
        "messages",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("assistant_id", sa.String(length=64), nullable=True),
        sa.Column("metadata", sa.Text(), server_default=json_default(), nullable=False),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.thread_id"],
            name=op.f("fk_messages_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_messages")),
    )
    create_index(op.f("ix_messages_created_at"), "messages", ["created_at"], unique=False)
    create_index(
        op.f("ix_messages_thread_id_created_at"),
        "messages",
        ["thread_id", "created_at"],
        unique=False,
    )

    create_table(
        "runs",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("assistant_id", sa.String(length=64), nullable=True),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("total_tokens", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.thread_id"],
            name=op.f("fk_runs_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("run_id", name=op.f("pk_runs")),
    )
    create_index(op.f("ix_runs_created_at"), "runs", ["created_at"], unique=False)
    create_index(
        op.f("ix_runs_thread_id_created_at"), "runs", ["thread_id", "created_at"], unique=False
    )


def downgrade() -> None:
    # Dropping a table drops its indexes; dropping them first fails on MySQL, where
    # the foreign keys of runs and messages need their thread_id indexes.
    for table in ("runs", "messages", "threads", "deletions"):
        op.drop_table(table)
