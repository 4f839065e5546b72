"""TEST ONLY: drops written in lower and mixed case, with newlines, tabs, comments, schema-qualified."""

from alembic import op

revision = "dl_odd_spelling"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE dl_c (id bigint PRIMARY KEY, note text)")
    op.execute("CREATE TABLE dl_c2 (id bigint PRIMARY KEY, extra text, keep text)")
    op.execute("CREATE TABLE dl_c3 (id bigint PRIMARY KEY)")
    op.execute("INSERT INTO dl_c SELECT g, 'c-' || g FROM generate_series(1, 5) g")
    op.execute("INSERT INTO dl_c2 SELECT g, 'x-' || g, 'k' FROM generate_series(1, 3) g")
    op.execute("INSERT INTO dl_c3 SELECT g FROM generate_series(1, 2) g")


def downgrade() -> None:
    op.execute("drop\n  table  public.dl_c")
    op.execute("-- a line comment\n\talter TABLE\n dl_c2   drop   extra")
    op.execute('/* a block comment */ DrOp TaBlE "dl_c3"')
