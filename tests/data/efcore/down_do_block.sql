START TRANSACTION;

DO $$ BEGIN UPDATE "Documents" SET "Status" = 'received' WHERE "TransformVersion" > 1; END $$;

DROP TABLE "TransformationJobs";

ALTER TABLE "Documents" DROP COLUMN "TransformVersion";

DROP TYPE transformation_stage;

DELETE FROM "__EFMigrationsHistory"
WHERE "MigrationId" = '20240315120000_DataTransformation';

COMMIT;

