START TRANSACTION;

DROP TABLE "TransformationJobs";

COMMIT;

CREATE INDEX CONCURRENTLY "IX_Documents_Status" ON "Documents" ("Status");

START TRANSACTION;

ALTER TABLE "Documents" DROP COLUMN "TransformVersion";

DROP TYPE transformation_stage;

DELETE FROM "__EFMigrationsHistory"
WHERE "MigrationId" = '20240315120000_DataTransformation';

COMMIT;

