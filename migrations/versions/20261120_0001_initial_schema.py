"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-20
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
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
    # MySQL 8 accepts a default on a TEXT column only as an expression (MariaDB and
    # the others take the plain literal, which is what 0.1 stores already have).
    dialect = op.get_bind().dialect
    if dialect.name == "mysql" and not getattr(dialect, "is_mariadb", False):
        return sa.text("('{}')")
    return sa.text("'{}'")


def upgrade() -> None:
    _create_table(
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
    _create_index(op.f("ix_deletions_deleted_at"), "deletions", ["deleted_at"], unique=False)
    _create_index(op.f("ix_deletions_thread_id"), "deletions", ["thread_id"], unique=False)
    _create_index(
        op.f("ix_deletions_user_id_deleted_at"),
        "deletions",
        ["user_id", "deleted_at"],
        unique=False,
    )
    _create_index(
        op.f("ix_deletions_workspace_deleted_at"),
        "deletions",
        ["workspace", "deleted_at"],
        unique=False,
    )

    _create_table(
        "threads",
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("workspace", sa.String(length=255), nullable=True),
        sa.Column("user_id", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_active", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", sa.Text(), server_default=_json_default(), nullable=False),
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
    _create_index(op.f("ix_threads_last_active"), "threads", ["last_active"], unique=False)
    _create_index(
        op.f("ix_threads_lease_expires_at"), "threads", ["lease_expires_at"], unique=False
    )
    _create_index(
        op.f("ix_threads_next_attempt_at"), "threads", ["next_attempt_at"], unique=False
    )
    _create_index(op.f("ix_threads_status"), "threads", ["status"], unique=False)
    _create_index(op.f("ix_threads_ttl_expires_at"), "threads", ["ttl_expires_at"], unique=False)
    _create_index(
        op.f("ix_threads_user_id_last_active"), "threads", ["user_id", "last_active"], unique=False
    )
    _create_index(
        op.f("ix_threads_workspace_last_active"),
        "threads",
        ["workspace", "last_active"],
        unique=False,
    )

    _create_table(
        "messages",
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("thread_id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("assistant_id", sa.String(length=64), nullable=True),
        sa.Column("metadata", sa.Text(), server_default=_json_default(), nullable=False),
        sa.ForeignKeyConstraint(
            ["thread_id"],
            ["threads.thread_id"],
            name=op.f("fk_messages_thread_id_threads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_messages")),
    )
    _create_index(op.f("ix_messages_created_at"), "messages", ["created_at"], unique=False)
    _create_index(
        op.f("ix_messages_thread_id_created_at"),
        "messages",
        ["thread_id", "created_at"],
        unique=False,
    )

    _create_table(
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
    _create_index(op.f("ix_runs_created_at"), "runs", ["created_at"], unique=False)
    _create_index(
        op.f("ix_runs_thread_id_created_at"), "runs", ["thread_id", "created_at"], unique=False
    )


def downgrade() -> None:
    # Dropping a table drops its indexes; dropping them first fails on MySQL, where
    # the foreign keys of runs and messages need their thread_id indexes.
    for table in ("runs", "messages", "threads", "deletions"):
        op.drop_table(table)
