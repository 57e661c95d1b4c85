-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- The online path in one round trip: store one run and its four vectors (encoded by the client with the
-- active encoder version) in one statement. Used by metaspace.embed_run right after a backtest.
-- Version 3 of store_run_v1.sql (revision 0016): it writes joint_embeddings.run_id, the column a Citus
-- cluster distributes the table by (docs/scaling.md), and finds a run's joint vector by that column. The
-- rest is version 2: a share lock on the encoder version's row until it commits, so an activation of
-- another version (which updates that row, then deletes the old version's vectors) waits for it, or it
-- sees the switch and refuses.
--
-- The record is upserted by run_id like import-runs does (an unchanged record is left alone; a changed
-- one is updated and its stale vectors dropped), then the vectors are inserted. If the given encoder
-- version is no longer the active one (a rebuild switched meanwhile), or the client encoded with a state
-- whose fingerprint is not that version's (the database was rebuilt under a long-running process),
-- nothing is written and the error (SQLSTATE 55000) tells the client to re-encode.
CREATE FUNCTION historical_db.store_run_v3(
    run jsonb, record_sha256 text, encoder_version integer, fingerprint text,
    joint vector, config vector, env vector, outcome vector, legacy_f32 bytea DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    id text := run ->> 'run_id';
    written integer;
BEGIN
    IF id IS NULL OR id = '' OR run ->> 'as_of_date' IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'store_run_v3: the run needs run_id and as_of_date';
    END IF;
    PERFORM 1 FROM historical_db.encoder_versions v
    WHERE v.version = encoder_version AND v.model_id = 'joint-meta-config-env-v1' AND v.is_active
      AND v.fingerprint = store_run_v3.fingerprint
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'encoder version ' || coalesce(encoder_version::text, 'NULL')
                      || ' with that fingerprint is not the active one',
            HINT = 'Encode the run again with the active version.';
    END IF;
    IF vector_dims(joint) <> 384 OR vector_dims(config) <> 384 OR vector_dims(env) <> 384
       OR vector_dims(outcome) <> 384 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'store_run_v3: every vector must have 384 dimensions';
    END IF;

    INSERT INTO historical_db.runs AS r
        (run_id, config_id, strategy_id, as_of_date, config, env, outcome, extra, record_sha256)
    VALUES (id, run ->> 'config_id', run ->> 'strategy_id', (run ->> 'as_of_date')::date,
            coalesce(run -> 'config', '{}'), coalesce(run -> 'env', '{}'), coalesce(run -> 'outcome', '{}'),
            coalesce(run -> 'extra', '{}'), record_sha256)
    ON CONFLICT (run_id) DO UPDATE SET
        config_id = excluded.config_id, strategy_id = excluded.strategy_id, as_of_date = excluded.as_of_date,
        config = excluded.config, env = excluded.env, outcome = excluded.outcome, extra = excluded.extra,
        record_sha256 = excluded.record_sha256, updated_at = now()
    WHERE r.record_sha256 <> excluded.record_sha256;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN  -- new or changed: vectors of an earlier form of this run are stale
        DELETE FROM historical_db.joint_embeddings j
        WHERE j.encoder_version IS NOT NULL AND j.joint_type = 'META_CONFIG_ENV_V0'
          AND j.model_id = 'joint-meta-config-env-v1' AND j.run_id = id;
        DELETE FROM historical_db.branch_embeddings b WHERE b.run_id = id;
        DELETE FROM historical_db.embedding_quarantine q WHERE q.run_id = id;
    END IF;

    IF legacy_f32 IS NULL THEN
        INSERT INTO historical_db.joint_embeddings
            (run_id, joint_type, as_of_date, entity_scope, model_id, vector, encoder_version)
        VALUES (id, 'META_CONFIG_ENV_V0', (run ->> 'as_of_date')::date,
                jsonb_build_object('run_id', id, 'config_id', run ->> 'config_id',
                                   'strategy_id', run ->> 'strategy_id', 'source', 'meta-config-env'),
                'joint-meta-config-env-v1', joint, encoder_version)
        ON CONFLICT (joint_type, model_id, run_id, encoder_version)
            WHERE encoder_version IS NOT NULL DO NOTHING;
    ELSE  -- the table was converted from float32 bytes: older readers still read them
        INSERT INTO historical_db.joint_embeddings
            (run_id, joint_type, as_of_date, entity_scope, model_id, vector, encoder_version, vector_f32)
        VALUES (id, 'META_CONFIG_ENV_V0', (run ->> 'as_of_date')::date,
                jsonb_build_object('run_id', id, 'config_id', run ->> 'config_id',
                                   'strategy_id', run ->> 'strategy_id', 'source', 'meta-config-env'),
                'joint-meta-config-env-v1', joint, encoder_version, legacy_f32)
        ON CONFLICT (joint_type, model_id, run_id, encoder_version)
            WHERE encoder_version IS NOT NULL DO NOTHING;
    END IF;
    INSERT INTO historical_db.branch_embeddings
        (run_id, branch, encoder_version, model_id, as_of_date, strategy_id, config_id, vector)
    SELECT id, b.branch, encoder_version, b.model_id, (run ->> 'as_of_date')::date, run ->> 'strategy_id',
           run ->> 'config_id', b.vector
    FROM (VALUES ('config', 'num-config-core-v1', config), ('env', 'num-env-core-v1', env),
                 ('outcome', 'num-outcome-core-v1', outcome)) AS b (branch, model_id, vector)
    ON CONFLICT (run_id, branch, encoder_version) DO NOTHING;
    RETURN id;
END
$fn$;

REVOKE EXECUTE ON FUNCTION historical_db.store_run_v3(jsonb, text, integer, text, vector, vector, vector, vector, bytea)
    FROM PUBLIC;
DO $grant$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_writer') THEN
        GRANT EXECUTE ON FUNCTION
            historical_db.store_run_v3(jsonb, text, integer, text, vector, vector, vector, vector, bytea)
            TO metaspace_writer;
    END IF;
END
$grant$;
