"""TEST ONLY: quoted, mixed-case, schema-qualified names (a column, then the table, then the schema)."""

from alembic import op

revision = "dl_quoted_names"
down_revision = "0002_data_transformation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute('CREATE SCHEMA "DL Mixed"')
    op.execute('CREATE TABLE "DL Mixed"."Odd ""Name""" ("Id" bigint PRIMARY KEY, "Val ue" text, "Other" text)')
    op.execute('INSERT INTO "DL Mixed"."Odd ""Name""" SELECT g, \'v\' || g, \'o\' FROM generate_series(1, 6) g')


def downgrade() -> None:
    op.drop_column('Odd "Name"', "Val ue", schema="DL Mixed")
    op.execute('DROP TABLE "DL Mixed"."Odd ""Name"""')
    op.execute('DROP SCHEMA "DL Mixed"')
