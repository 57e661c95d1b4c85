-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- Two NOLOGIN roles to grant to your login roles (README "Roles"):
--   metaspace_reader: read the tables, run the search functions;
--   metaspace_writer: the reader's rights, plus import and embed (not the bulk index rebuild, which
--                     needs the tables' owner).
-- Roles are cluster-wide: an existing role is reused. Without the right to create roles, the migration
-- goes on and says so; an administrator can create them and rerun this file's block (psql -f).
DO $roles$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['metaspace_reader', 'metaspace_writer'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name) THEN
            BEGIN
                IF name = 'metaspace_reader' THEN
                    CREATE ROLE metaspace_reader NOLOGIN;
                ELSE
                    CREATE ROLE metaspace_writer NOLOGIN;
                END IF;
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE NOTICE USING MESSAGE = 'not allowed to create role ' || name
                    || '; an administrator can create it (CREATE ROLE ' || name || ' NOLOGIN) and rerun the grants';
            END;
        END IF;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_reader') THEN
        GRANT USAGE ON SCHEMA historical_db TO metaspace_reader;
        GRANT SELECT ON ALL TABLES IN SCHEMA historical_db TO metaspace_reader;
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA historical_db TO metaspace_reader;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_writer') THEN
        GRANT USAGE ON SCHEMA historical_db TO metaspace_writer;
        GRANT SELECT ON ALL TABLES IN SCHEMA historical_db TO metaspace_writer;
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA historical_db TO metaspace_writer;
        GRANT INSERT, UPDATE, DELETE ON historical_db.runs, historical_db.joint_embeddings,
            historical_db.branch_embeddings, historical_db.embedding_quarantine TO metaspace_writer;
        GRANT INSERT ON historical_db.encoder_versions TO metaspace_writer;
        GRANT UPDATE (is_active, activated_at) ON historical_db.encoder_versions TO metaspace_writer;
        GRANT USAGE ON ALL SEQUENCES IN SCHEMA historical_db TO metaspace_writer;
    END IF;
END
$roles$;
