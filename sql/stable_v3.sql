-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- The stable names, version 3 (revision 0019): search_distinct is new (sql/branch_entities_v1.sql), the
-- nearest distinct environments, configs or outcomes of a branch space, each with its runs' count and dates.
-- The other names are stable_v1.sql's and stable_v2.sql's (store_run_v3 and embed_pending_v2, nearest_runs_v2
-- under every search, were replaced in place by revision 0019: their names and answers stay).

CREATE FUNCTION historical_db.search_distinct(
    query vector, k integer DEFAULT 10, space text DEFAULT 'env', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false, encoder_version integer DEFAULT NULL
) RETURNS SETOF historical_db.entity_match_v1
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.search_distinct_v1(query, k, space, as_of, strategy_ids, config_ids, scope, exact,
                                                   encoder_version)
$fn$;
