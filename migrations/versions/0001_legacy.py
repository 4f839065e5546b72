"""The legacy baseline: the tables the legacy transformation logic uses.

Revision ID: 0001_legacy
Revises: (none)

`documents` holds what clients submit; `transformation_results` what the legacy engine produced.
These tables exist in production long before DataTransformationFeature and hold its live data:
the feature's downgrade must never drop them. Names and columns are fixed by docs/interfaces.md.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001_legacy"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),  # BIGSERIAL
        sa.Column("external_ref", sa.Text(), nullable=False),
        sa.Column("payload", postgresql.JSONB(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default=sa.text("'received'")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", name="documents_pkey"),
        sa.UniqueConstraint("external_ref", name="documents_external_ref_key"),
    )
    op.create_table(
        "transformation_results",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),  # BIGSERIAL
        sa.Column("document_id", sa.BigInteger(), nullable=False),
        sa.Column("output", postgresql.JSONB(), nullable=False),
        sa.Column("engine", sa.Text(), nullable=False, server_default=sa.text("'legacy'")),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("id", name="transformation_results_pkey"),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"], name="transformation_results_document_id_fkey"),
    )
    op.create_index("ix_transformation_results_document_id", "transformation_results", ["document_id"])


def downgrade() -> None:
    op.drop_index("ix_transformation_results_document_id", table_name="transformation_results")
    op.drop_table("transformation_results")
    op.drop_table("documents")
