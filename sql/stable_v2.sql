-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- The stable names, version 2 (revision 0018): suggest_configs and suggest_for_env now answer with
-- suggest_configs_v7 and suggest_for_env_v6 (same arguments and columns as before: replaced in place), and
-- suggest_picks is new (sql/suggest_v7.sql). The other names are stable_v1.sql's.

CREATE OR REPLACE FUNCTION historical_db.suggest_configs(
    env vector, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 1000, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false, eligible_configs text[] DEFAULT NULL,
    encoder_version integer DEFAULT NULL, history integer DEFAULT 20000, horizon integer DEFAULT NULL,
    local_scale double precision DEFAULT NULL, calibrated boolean DEFAULT true
) RETURNS SETOF historical_db.config_suggestion_v5
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.suggest_configs_v7(env, k, as_of, objective, higher_is_better, neighbours, min_runs,
                                                   strategy_ids, exact, eligible_configs, encoder_version, history,
                                                   horizon, local_scale, calibrated)
$fn$;

CREATE OR REPLACE FUNCTION historical_db.suggest_for_env(
    env jsonb, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 1000, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false, history integer DEFAULT 20000,
    horizon integer DEFAULT NULL
) RETURNS SETOF historical_db.config_suggestion_v5
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.suggest_for_env_v6(env, k, as_of, objective, higher_is_better, neighbours, min_runs,
                                                   strategy_ids, exact, history, horizon)
$fn$;
