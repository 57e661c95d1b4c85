-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- Search and suggest by JSON (revision 0011): what `metaspace search --record/--env/--config/--outcome` and
-- `metaspace suggest --env` answer, for clients that speak only SQL. The record is encoded inside the
-- database with the active encoder version (historical_db.encode_v1), then searched like a vector query
-- made with that version. A record's own as_of_date caps the date as the command line's does: the answer
-- is as of the earlier of it and as_of.

-- The date a record is asked as of: the earlier of its own as_of_date (if any) and as_of.
CREATE FUNCTION historical_db.record_as_of_v1(record jsonb, as_of date) RETURNS date
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    own date;
BEGIN
    IF jsonb_typeof(record) = 'object' AND coalesce(record ->> 'as_of_date', '') <> '' THEN
        BEGIN
            own := left(record ->> 'as_of_date', 10)::date;
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = 'as_of_date ' || quote_literal(record ->> 'as_of_date')
                          || ' is not an ISO date (YYYY-MM-DD)';
        END;
    END IF;
    RETURN CASE WHEN own IS NULL THEN as_of WHEN as_of IS NULL THEN own ELSE least(own, as_of) END;
END
$fn$;

-- 1. The k nearest runs to a JSON record in a space: a whole or partial run record (a joint record that
--    lacks a branch gets the fitted imputation), or, in a branch space, the bare branch object.
CREATE FUNCTION historical_db.search_record_v1(
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
    RETURN QUERY SELECT * FROM historical_db.search_runs_v2(
        historical_db.encode_v1(space, record, version), k, space, historical_db.record_as_of_v1(record, as_of),
        strategy_ids, config_ids, scope, exact, version);
END
$fn$;

-- 2. Configs that worked in environments like a JSON env (a bare env object, or a run record with one),
--    as of a date: suggest_configs_v2 (sql/suggest_v2.sql) on the env encoded inside the database, with
--    the version it was encoded with.
CREATE FUNCTION historical_db.suggest_for_env_v1(
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
    RETURN QUERY SELECT * FROM historical_db.suggest_configs_v2(
        historical_db.encode_v1('env', env, version), k, historical_db.record_as_of_v1(env, as_of), objective,
        higher_is_better, neighbours, min_runs, strategy_ids, exact, NULL, version);
END
$fn$;
