-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- Embedding inside the database (revision 0011): runs that another program inserted into historical_db.runs
-- get their vectors for the active encoder version from the SQL encoders (sql/encode_v1.sql), the ones
-- `metaspace embed-runs` would write. Writers only (like store_run_v3).
-- Version 2 of embed_pending_v1.sql (revision 0016): it writes joint_embeddings.run_id, the column a Citus
-- cluster distributes the table by (docs/scaling.md), and finds the runs without vectors by joining on it.
-- embed_pending_v1 now hands over to it (sql/writers_handover_v1.sql).
--
-- Safe beside a running embed-runs: it waits for the writers' advisory lock that embed-runs holds
-- (metaspace/store/vectors.py EMBED_LOCK_KEY), holds it until it commits, and inserts with the same
-- conflict rules. The runs it encodes are locked FOR SHARE until then, so an import that changes one
-- meanwhile waits, and then drops the vectors of the record it replaced, as it does for embed-runs.
-- Runs that cannot be encoded are quarantined with the field and the reason, as embed-runs does.
-- It fits nothing: before the first `metaspace embed-runs` there is no active version to embed with.
CREATE FUNCTION historical_db.embed_pending_v2(max_runs integer DEFAULT 1000)
RETURNS TABLE (encoder_version integer, embedded integer, quarantined integer)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    target integer;
    legacy boolean;
BEGIN
    IF max_runs IS NULL OR max_runs < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'max_runs must be 1 or more, got ' || coalesce(max_runs::text, 'NULL');
    END IF;
    PERFORM pg_advisory_xact_lock(120282511668080);  -- EMBED_LOCK_KEY: one writer of vectors at a time
    -- The active version, held FOR SHARE until commit: an activation of another one waits for this
    -- transaction (and then deletes its vectors with the old version's), or has already switched.
    FOR attempt IN 1..3 LOOP
        target := historical_db.encoder_version_v1(NULL);
        PERFORM 1 FROM historical_db.encoder_versions v WHERE v.version = target AND v.is_active
        FOR SHARE;
        EXIT WHEN FOUND;
        IF attempt = 3 THEN
            RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = 'the active encoder version keeps changing: is a rebuild switching?';
        END IF;
    END LOOP;
    legacy := EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = 'historical_db.joint_embeddings'::regclass
                      AND a.attname = 'vector_f32' AND NOT a.attisdropped);
    CREATE TEMP TABLE IF NOT EXISTS embed_pending_rows (
        run_id text, config_id text, strategy_id text, as_of_date date, record_sha256 text, joint vector,
        config vector, env vector, outcome vector, field text, reason text
    ) ON COMMIT DELETE ROWS;
    TRUNCATE pg_temp.embed_pending_rows;
    INSERT INTO pg_temp.embed_pending_rows
    SELECT p.run_id, p.config_id, p.strategy_id, p.as_of_date, p.record_sha256, e.joint, e.config_vector,
           e.env_vector, e.outcome_vector, e.field, e.reason
    FROM (SELECT r.* FROM historical_db.runs r
          WHERE NOT EXISTS (SELECT 1 FROM historical_db.joint_embeddings j
                            WHERE j.encoder_version = target AND j.joint_type = 'META_CONFIG_ENV_V0'
                              AND j.model_id = 'joint-meta-config-env-v1' AND j.run_id = r.run_id)
            AND NOT EXISTS (SELECT 1 FROM historical_db.embedding_quarantine q
                            WHERE q.encoder_version = target AND q.run_id = r.run_id
                              AND q.record_sha256 = r.record_sha256)
          ORDER BY r.run_id LIMIT max_runs
          FOR SHARE OF r) p
    CROSS JOIN LATERAL historical_db.encode_run_v1(target, p.config, p.env, p.outcome) e;

    IF legacy THEN  -- the table was converted from float32 bytes: older readers still read them
        INSERT INTO historical_db.joint_embeddings
            (run_id, joint_type, as_of_date, entity_scope, model_id, vector, encoder_version, vector_f32)
        SELECT s.run_id, 'META_CONFIG_ENV_V0', s.as_of_date,
               jsonb_build_object('run_id', s.run_id, 'config_id', s.config_id, 'strategy_id', s.strategy_id,
                                  'source', 'meta-config-env'),
               'joint-meta-config-env-v1', s.joint, target,
               (SELECT string_agg(substr(b, 4 * i + 8, 1) || substr(b, 4 * i + 7, 1) || substr(b, 4 * i + 6, 1)
                                  || substr(b, 4 * i + 5, 1), ''::bytea ORDER BY i)
                FROM (SELECT vector_send(s.joint) AS b) v, generate_series(0, 383) i)
        FROM pg_temp.embed_pending_rows s WHERE s.field IS NULL
        ON CONFLICT (joint_type, model_id, run_id, encoder_version)
            WHERE encoder_version IS NOT NULL DO NOTHING;
    ELSE
        INSERT INTO historical_db.joint_embeddings
            (run_id, joint_type, as_of_date, entity_scope, model_id, vector, encoder_version)
        SELECT s.run_id, 'META_CONFIG_ENV_V0', s.as_of_date,
               jsonb_build_object('run_id', s.run_id, 'config_id', s.config_id, 'strategy_id', s.strategy_id,
                                  'source', 'meta-config-env'),
               'joint-meta-config-env-v1', s.joint, target
        FROM pg_temp.embed_pending_rows s WHERE s.field IS NULL
        ON CONFLICT (joint_type, model_id, run_id, encoder_version)
            WHERE encoder_version IS NOT NULL DO NOTHING;
    END IF;
    GET DIAGNOSTICS embedded = ROW_COUNT;
    INSERT INTO historical_db.branch_embeddings
        (run_id, branch, encoder_version, model_id, as_of_date, strategy_id, config_id, vector)
    SELECT s.run_id, b.branch, target, b.model_id, s.as_of_date, s.strategy_id, s.config_id,
           CASE b.branch WHEN 'config' THEN s.config WHEN 'env' THEN s.env ELSE s.outcome END
    FROM pg_temp.embed_pending_rows s
    CROSS JOIN (VALUES ('config', 'num-config-core-v1'), ('env', 'num-env-core-v1'),
                       ('outcome', 'num-outcome-core-v1')) AS b (branch, model_id)
    WHERE s.field IS NULL
    ON CONFLICT (run_id, branch, encoder_version) DO NOTHING;
    INSERT INTO historical_db.embedding_quarantine (run_id, encoder_version, field, reason, record_sha256)
    SELECT s.run_id, target, s.field, s.reason, s.record_sha256 FROM pg_temp.embed_pending_rows s WHERE s.field IS NOT NULL
    ON CONFLICT (run_id, encoder_version) DO UPDATE SET field = excluded.field, reason = excluded.reason,
        record_sha256 = excluded.record_sha256, quarantined_at = now();
    GET DIAGNOSTICS quarantined = ROW_COUNT;
    encoder_version := target;
    RETURN NEXT;
END
$fn$;

REVOKE EXECUTE ON FUNCTION historical_db.embed_pending_v2(integer) FROM PUBLIC;
DO $grant$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_writer') THEN
        GRANT EXECUTE ON FUNCTION historical_db.embed_pending_v2(integer) TO metaspace_writer;
    END IF;
END
$grant$;
