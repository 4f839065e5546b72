START TRANSACTION;

DO $EF$
BEGIN
    IF EXISTS(SELECT 1 FROM "__EFMigrationsHistory" WHERE "MigrationId" = '20240315120000_DataTransformation') THEN
        DROP TABLE "TransformationJobs";
    END IF;
END $EF$;

DO $EF$
BEGIN
    IF EXISTS(SELECT 1 FROM "__EFMigrationsHistory" WHERE "MigrationId" = '20240315120000_DataTransformation') THEN
    ALTER TABLE "Documents" DROP COLUMN "TransformVersion";
    END IF;
END $EF$;

DO $EF$
BEGIN
    IF EXISTS(SELECT 1 FROM "__EFMigrationsHistory" WHERE "MigrationId" = '20240315120000_DataTransformation') THEN
    DROP TYPE transformation_stage;
    END IF;
END $EF$;

DO $EF$
BEGIN
    IF EXISTS(SELECT 1 FROM "__EFMigrationsHistory" WHERE "MigrationId" = '20240315120000_DataTransformation') THEN
    DELETE FROM "__EFMigrationsHistory"
    WHERE "MigrationId" = '20240315120000_DataTransformation';
    END IF;
END $EF$;
COMMIT;

