-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- Creates pgvector if the server has it; stops with what to install when it is missing or too old.
-- metaspace needs 0.8 for iterative index scans (filtered k-NN that still returns k rows).
DO $require_pgvector$
DECLARE
    installed text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'vector') THEN
        RAISE EXCEPTION 'pgvector is not installed on this PostgreSQL server'
            USING HINT = 'Install pgvector 0.8 or newer (https://github.com/pgvector/pgvector#installation), '
                         'or run metaspace without --database-url to use its embedded server.';
    END IF;
    CREATE EXTENSION IF NOT EXISTS vector;
    SELECT extversion INTO installed FROM pg_extension WHERE extname = 'vector';
    IF string_to_array(split_part(installed, '-', 1), '.')::int[] < ARRAY[0, 8] THEN
        RAISE EXCEPTION USING
            MESSAGE = 'pgvector ' || installed || ' is installed; metaspace needs 0.8 or newer (iterative index scans)',
            HINT = 'Install pgvector 0.8 or newer on the server, then run: ALTER EXTENSION vector UPDATE;';
    END IF;
END
$require_pgvector$;
