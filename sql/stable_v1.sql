-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- The stable SQL names (revision 0017): what a user calls, as pgvector's and PostGIS's users call
-- vector_l2_ops and ST_Distance. Each is a thin wrapper over the current version, with that version's
-- arguments and columns, and answers as the command line does: metaspace itself calls these names, never
-- a _vN, so they cannot drift apart. A revision that makes a new current version replaces the wrapper
-- (and when the arguments or columns change, drops and creates it again; docs/sql.md says so). The _vN
-- functions stay callable for a client that pins one.
--
--   encode          -> encode_v1            a JSON record (or branch object) as a vector of a space
--   search_runs     -> search_runs_v3       the nearest runs to a vector
--   neighbours      -> neighbours_v3        the nearest runs to a stored run
--   search_record   -> search_record_v2     the nearest runs to a JSON record
--   suggest_configs -> suggest_configs_v6   configs for an env vector
--   suggest_for_env -> suggest_for_env_v5   configs for a JSON env
--   store_run       -> store_run_v3         one run and its vectors, in one round trip (writers)
--   embed_pending   -> embed_pending_v2     embed, inside the database, runs another program inserted (writers)

CREATE FUNCTION historical_db.encode(space text, record jsonb, encoder_version integer DEFAULT NULL)
RETURNS vector(384)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$ SELECT historical_db.encode_v1(space, record, encoder_version) $fn$;

CREATE FUNCTION historical_db.search_runs(
    query vector, k integer DEFAULT 10, space text DEFAULT 'joint', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false, encoder_version integer DEFAULT NULL
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.search_runs_v3(query, k, space, as_of, strategy_ids, config_ids, scope, exact,
                                               encoder_version)
$fn$;

CREATE FUNCTION historical_db.neighbours(
    of_run text, k integer DEFAULT 10, space text DEFAULT 'joint', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false, encoder_version integer DEFAULT NULL
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.neighbours_v3(of_run, k, space, as_of, strategy_ids, config_ids, scope, exact,
                                              encoder_version)
$fn$;

CREATE FUNCTION historical_db.search_record(
    record jsonb, k integer DEFAULT 10, space text DEFAULT 'joint', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.search_record_v2(record, k, space, as_of, strategy_ids, config_ids, scope, exact)
$fn$;

CREATE FUNCTION historical_db.suggest_configs(
    env vector, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 1000, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false, eligible_configs text[] DEFAULT NULL,
    encoder_version integer DEFAULT NULL, history integer DEFAULT 20000, horizon integer DEFAULT NULL,
    local_scale double precision DEFAULT NULL, calibrated boolean DEFAULT true
) RETURNS SETOF historical_db.config_suggestion_v5
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.suggest_configs_v6(env, k, as_of, objective, higher_is_better, neighbours, min_runs,
                                                   strategy_ids, exact, eligible_configs, encoder_version, history,
                                                   horizon, local_scale, calibrated)
$fn$;

CREATE FUNCTION historical_db.suggest_for_env(
    env jsonb, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 1000, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false, history integer DEFAULT 20000,
    horizon integer DEFAULT NULL
) RETURNS SETOF historical_db.config_suggestion_v5
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.suggest_for_env_v5(env, k, as_of, objective, higher_is_better, neighbours, min_runs,
                                                   strategy_ids, exact, history, horizon)
$fn$;

CREATE FUNCTION historical_db.store_run(
    run jsonb, record_sha256 text, encoder_version integer, fingerprint text,
    joint vector, config vector, env vector, outcome vector, legacy_f32 bytea DEFAULT NULL
) RETURNS text
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $fn$
    SELECT historical_db.store_run_v3(run, record_sha256, encoder_version, fingerprint, joint, config, env, outcome,
                                      legacy_f32)
$fn$;

CREATE FUNCTION historical_db.embed_pending(max_runs integer DEFAULT 1000)
RETURNS TABLE (encoder_version integer, embedded integer, quarantined integer)
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $fn$ SELECT * FROM historical_db.embed_pending_v2(max_runs) $fn$;
