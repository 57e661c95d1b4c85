-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- Search and suggest by JSON, version 2 (revision 0012): search_record_v1 and suggest_for_env_v1
-- (sql/search_record_v1.sql) exactly, calling search_runs_v3 and suggest_configs_v3, which walk whichever
-- HNSW graph a space has (halfvec, float32) or scan exactly where it has none. Same arguments, same columns.

-- 1. The k nearest runs to a JSON record in a space: a whole or partial run record (a joint record that
--    lacks a branch gets the fitted imputation), or, in a branch space, the bare branch object.
CREATE FUNCTION historical_db.search_record_v2(
    record jsonb, k integer DEFAULT 10, space text DEFAULT 'joint', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    version integer;
BEGIN
    PERFORM historical_db.check_search_args_v1(NULL, k, space);
    version := historical_db.encoder_version_v1(NULL);
    RETURN QUERY SELECT * FROM historical_db.search_runs_v3(
        historical_db.encode_v1(space, record, version), k, space, historical_db.record_as_of_v1(record, as_of),
        strategy_ids, config_ids, scope, exact, version);
END
$fn$;

-- 2. Configs that worked in environments like a JSON env (a bare env object, or a run record with one),
--    as of a date: suggest_configs_v3 (sql/suggest_v3.sql) on the env encoded inside the database, with
--    the version it was encoded with.
CREATE FUNCTION historical_db.suggest_for_env_v2(
    env jsonb, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 1000, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false
) RETURNS SETOF historical_db.config_suggestion_v2
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    version integer := historical_db.encoder_version_v1(NULL);
BEGIN
    RETURN QUERY SELECT * FROM historical_db.suggest_configs_v3(
        historical_db.encode_v1('env', env, version), k, historical_db.record_as_of_v1(env, as_of), objective,
        higher_is_better, neighbours, min_runs, strategy_ids, exact, NULL, version);
END
$fn$;
