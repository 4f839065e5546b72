"""TEST ONLY: the shapes the way forward must restore, on top of the feature.

Revision ID: 0003_restore_shapes
Revises: 0002_data_transformation

Never part of migrations/: added with version_locations by tests/integration/test_schema_restore.py.
- `documents.priority`: a column of an ENUM type on a legacy table. The downgrade drops the column
  and the type, so the archive keeps its values as text and the restore casts them back.
- `job_notes`: a table whose foreign key points at `transformation_jobs` (restored first), with an
  identity key (GENERATED ALWAYS: the restore inserts with OVERRIDING SYSTEM VALUE and moves the
  identity's sequence) and a unique column (`ref`).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003_restore_shapes"
down_revision: str | Sequence[str] | None = "0002_data_transformation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LABELS = ("low", "normal", "high")


def _priority() -> postgresql.ENUM:
    return postgresql.ENUM(*LABELS, name="document_priority", create_type=False)


def upgrade() -> None:
    _priority().create(op.get_bind(), checkfirst=False)
    op.add_column("documents", sa.Column("priority", _priority(), nullable=True))
    op.create_table(
        "job_notes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("job_id", sa.BigInteger(), nullable=False),
        sa.Column("ref", sa.Text(), nullable=False),
        sa.Column("note", postgresql.JSONB(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="job_notes_pkey"),
        sa.UniqueConstraint("ref", name="job_notes_ref_key"),
        sa.ForeignKeyConstraint(["job_id"], ["transformation_jobs.id"], name="job_notes_job_id_fkey"),
    )


def downgrade() -> None:
    op.drop_table("job_notes")
    op.drop_column("documents", "priority")
    _priority().drop(op.get_bind(), checkfirst=False)
