START TRANSACTION;

DELETE FROM "TransformationResults" WHERE "Engine" = 'v2';

DROP TABLE "TransformationJobs";

ALTER TABLE "Documents" DROP COLUMN "TransformVersion";

DROP TYPE transformation_stage;

DELETE FROM "__EFMigrationsHistory"
WHERE "MigrationId" = '20240315120000_DataTransformation';

COMMIT;

