-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- Two NOLOGIN roles to grant to your login roles (README "Roles"):
--   metaspace_reader: read every table (clusters included), run the search functions, pass the schema check;
--   metaspace_writer: the reader's rights, plus import-runs, embed-runs, embed_run, cluster and evaluate
--                     --save-calibration. On PostgreSQL 17 and newer it may also ANALYZE the tables
--                     (MAINTAIN). Dropping and building HNSW indexes needs the tables' owner: a writer's
--                     large backfill loads with the indexes in place instead, and says so.
-- Roles are cluster-wide: an existing role is reused. Without the right to create roles, the migration
-- goes on and says so; an administrator can create them and rerun this file (psql -f).
-- Version 5 of roles_v1.sql (revision 0019): roles_v4.sql's grants, with the writer's rights on the tables of
-- distinct branch vectors (branch_entities, run_entities) where it had them on branch_embeddings (now a view
-- over them, read-only), and the functions every writer of branch vectors calls (attach_entities_v1,
-- forget_vectors_v1, drop_orphans_v1) the writer's alone, like store_run and embed_pending.
-- Rerun this file, the latest, after restoring grants by hand.
DO $roles$
DECLARE
    name text;
    tables text := 'historical_db.runs, historical_db.joint_embeddings, historical_db.branch_entities, '
        'historical_db.run_entities, historical_db.embedding_quarantine, historical_db.clusterings, '
        'historical_db.run_clusters';
BEGIN
    FOREACH name IN ARRAY ARRAY['metaspace_reader', 'metaspace_writer'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            BEGIN
                EXECUTE 'CREATE ROLE ' || quote_ident(name) || ' NOLOGIN';
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE USING MESSAGE = 'not allowed to create role ' || name
                    || '; an administrator can create it (CREATE ROLE ' || name || ' NOLOGIN) and rerun the grants';
            END;
        END IF;
        IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            EXECUTE 'GRANT USAGE ON SCHEMA historical_db TO ' || quote_ident(name);
            EXECUTE 'GRANT SELECT ON ALL TABLES IN SCHEMA historical_db TO ' || quote_ident(name);
            EXECUTE 'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA historical_db TO ' || quote_ident(name);
            EXECUTE 'GRANT SELECT ON public.metaspace_schema_version TO ' || quote_ident(name);
            EXECUTE 'ALTER DEFAULT PRIVILEGES IN SCHEMA historical_db GRANT SELECT ON TABLES TO ' || quote_ident(name);
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_reader') THEN
        GRANT SELECT ON historical_db.suggest_calibrations TO metaspace_reader;
        -- The functions that write are the writer's alone (whichever of them exist when this file runs:
        -- an administrator may rerun it after later revisions).
        FOR name IN SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                    WHERE n.nspname = 'historical_db'
                      AND p.proname ~ '^(store_run|embed_pending|attach_entities|forget_vectors|drop_orphans)(_v[0-9]+)?$' LOOP
            EXECUTE 'REVOKE EXECUTE ON FUNCTION ' || name || ' FROM metaspace_reader';
        END LOOP;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_writer') THEN
        EXECUTE 'GRANT INSERT, UPDATE, DELETE ON ' || tables || ' TO metaspace_writer';
        -- branch_embeddings is a view now, read-only: what roles_v4.sql granted on the table goes.
        REVOKE ALL ON historical_db.branch_embeddings FROM metaspace_writer;
        GRANT SELECT ON historical_db.branch_embeddings TO metaspace_writer;
        -- A fit registers the SQL form of its state too (tables of later revisions, when they exist).
        FOR name IN SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = 'historical_db' AND c.relkind = 'r'
                      AND c.relname IN ('encoder_branches', 'encoder_features', 'encoder_matrices') LOOP
            EXECUTE 'GRANT SELECT, INSERT ON ' || name || ' TO metaspace_writer';
        END LOOP;
        GRANT INSERT ON historical_db.encoder_versions TO metaspace_writer;
        GRANT UPDATE (is_active, activated_at) ON historical_db.encoder_versions TO metaspace_writer;
        GRANT USAGE ON ALL SEQUENCES IN SCHEMA historical_db TO metaspace_writer;
        GRANT SELECT, INSERT, DELETE ON historical_db.suggest_calibrations TO metaspace_writer;
        IF current_setting('server_version_num')::integer >= 170000 THEN
            EXECUTE 'GRANT MAINTAIN ON ' || tables || ', historical_db.encoder_versions TO metaspace_writer';
        END IF;
    END IF;
END
$roles$;
