-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- Suggest's records on Citus without reading every run of the candidates (revision 0022): recent_records_v2 is
-- recent_records_v1 (sql/suggest_v8.sql) with the same arguments, rule and rows, and v1 hands over to it, so that
-- suggest_evidence_v2 and every suggest function answer through it.
--
-- On one server it is v1's walk of runs_config_as_of per config, unchanged. On Citus, v1 ranked every run of the
-- candidate configs by date in one query over the shards: at 1,000,000 runs (40 configs of 25,000 runs each) a
-- suggest took 4.6 s there, against 0.1 s on one server (docs/benchmarks.md, issue 26). For up to 64 candidates, v2
-- takes their records in two steps that the shards answer by their index:
--   1. its cutoff, the date of the per_config-th newest run that reports the objective: a query per config ending
--      in ORDER BY as_of_date DESC LIMIT per_config, which Citus sends to every shard with its LIMIT, each shard
--      walking runs_config_as_of newest first and stopping;
--   2. every run of each candidate on or after its cutoff: one query over the shards, joining the (config, cutoff)
--      pairs to the runs, which each shard reads by the same index from the cutoff on. A FETCH FIRST n ROWS WITH
--      TIES in date order is exactly the runs dated on or after the n-th one's date.
-- Each step 1 is a round trip to every shard: with more candidates (a search's history, where configs rarely run
-- twice and each has few runs), or no count to stop at, v1's one ranked query costs less, and v2 takes it. Step 2
-- ranks what it reads again, so that a run stored between the steps (on the workers each step is a statement of
-- its own, with its own snapshot) takes its place as in one snapshot rather than adding to the count.
-- The test for "reports the objective as a number" is written as jsonb_typeof(...) <> ALL (every other type; the
-- "null" quoted, as a bare null in an array literal is a NULL, which no value is unequal to): the same rows
-- (jsonb_typeof is NULL for a missing path, and NULL <> ALL (...) is not true), but a planner
-- without statistics on it takes it to keep most runs, not one in 200 as it takes "= 'number'". The workers plan
-- the shards' queries with their own settings (a function's SET stays on the coordinator), and with one run in
-- 200 expected a LIMIT would not stop a walk early: they would read every run of the config by a bitmap and sort.
CREATE FUNCTION historical_db.recent_records_v2(
    configs text[], per_config bigint, as_of date, path text[], strategy_ids text[]
) RETURNS TABLE (as_of_date date, env_key bigint, config_id text, value double precision)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
SET plan_cache_mode = 'force_custom_plan'  -- (as suggest_evidence_v1: each call planned for its own arguments)
-- (v1's reason, on one server: with the objective's test misjudged the planner read every run of each config by a
-- bitmap and sorted them, 3.9 s a call at 1,000,000 runs against 21 ms in index order)
SET enable_bitmapscan = off
SET enable_sort = off
AS $fn$
#variable_conflict use_column
DECLARE
    cutoffs date[];
    earliest date;
    taken date;
    candidate text;
BEGIN
    IF NOT historical_db.distributed_v1('historical_db.runs') THEN
        RETURN QUERY
        SELECT h.as_of_date, h.env_key, w.config_id, h.value
        FROM unnest(configs) AS w (config_id)
        CROSS JOIN LATERAL (
            SELECT r.as_of_date, jsonb_hash_extended(r.env, 0) AS env_key,
                   (r.outcome #>> path)::double precision AS value
            FROM historical_db.runs r
            WHERE coalesce(r.config_id, r.run_id) = w.config_id
              AND (as_of IS NULL OR r.as_of_date <= as_of) AND jsonb_typeof(r.outcome #> path) = 'number'
              AND (strategy_ids IS NULL OR r.strategy_id = ANY (strategy_ids))
            ORDER BY r.as_of_date DESC
            FETCH FIRST (per_config) ROWS WITH TIES
        ) h;
        RETURN;
    END IF;
    IF per_config < 0 THEN  -- (as one server's FETCH FIRST)
        RAISE EXCEPTION USING ERRCODE = 'invalid_row_count_in_limit_clause', MESSAGE = 'LIMIT must not be negative';
    END IF;
    IF per_config = 0 OR coalesce(cardinality(configs), 0) = 0 THEN
        RETURN;  -- (as one server: FETCH FIRST 0 ROWS takes none; with no configs there is nothing to read)
    END IF;
    IF cardinality(configs) <= 64 AND per_config < 9223372036854775807 THEN
        -- Step 1: each config's cutoff (NULL: no run of it reports the objective).
        cutoffs := ARRAY[]::date[];
        FOREACH candidate IN ARRAY configs LOOP
            SELECT min(t.as_of_date) INTO taken FROM (
                SELECT r.as_of_date FROM historical_db.runs r
                WHERE coalesce(r.config_id, r.run_id) = candidate
                  AND (as_of IS NULL OR r.as_of_date <= as_of)
                  AND jsonb_typeof(r.outcome #> path) <> ALL ('{object,array,string,boolean,"null"}'::text[])
                  AND (strategy_ids IS NULL OR r.strategy_id = ANY (strategy_ids))
                ORDER BY r.as_of_date DESC
                LIMIT per_config
            ) t;
            cutoffs := cutoffs || taken;
        END LOOP;
        earliest := (SELECT min(u.cutoff) FROM unnest(cutoffs) AS u (cutoff));
    END IF;
    -- Step 2 (or, with more than 64 candidates or no count, v1's one ranked query: cutoffs NULL): the runs from the
    -- cutoffs, ranked again, so that a run stored between the two steps (each its own snapshot on the workers)
    -- takes its place as it would in one snapshot, rather than adding to the count. Each config as often as it is
    -- asked for, as one server's LATERAL gives it.
    RETURN QUERY
    SELECT h.as_of_date, h.env_key, w.config_id, h.value
    FROM unnest(configs) AS w (config_id)
    JOIN (
        SELECT r.as_of_date, jsonb_hash_extended(r.env, 0) AS env_key,
               coalesce(r.config_id, r.run_id) AS config_id, (r.outcome #>> path)::double precision AS value,
               rank() OVER (PARTITION BY coalesce(r.config_id, r.run_id) ORDER BY r.as_of_date DESC) AS newest
        FROM (SELECT u.config_id, min(u.cutoff) AS cutoff FROM unnest(configs, cutoffs) AS u (config_id, cutoff)
              GROUP BY u.config_id) c  -- (a config asked for twice: its runs once, then as often as asked)
        JOIN historical_db.runs r ON coalesce(r.config_id, r.run_id) = c.config_id
        -- (each config's cutoff applies in the join; the candidates and the earliest cutoff are also given as
        -- values, from which a shard's planner, which cannot know the cutoffs' reach, sees that few runs are
        -- read and walks runs_config_as_of rather than scanning its shard: 0.14 s against 0.56 s here)
        WHERE r.as_of_date >= coalesce(c.cutoff, '-infinity'::date)
          AND (cutoffs IS NULL OR c.cutoff IS NOT NULL)
          AND coalesce(r.config_id, r.run_id) = ANY (configs)
          AND (earliest IS NULL OR r.as_of_date >= earliest)
          AND (as_of IS NULL OR r.as_of_date <= as_of)
          AND jsonb_typeof(r.outcome #> path) <> ALL ('{object,array,string,boolean,"null"}'::text[])
          AND (strategy_ids IS NULL OR r.strategy_id = ANY (strategy_ids))
    ) h ON h.config_id = w.config_id
    WHERE per_config IS NULL OR h.newest <= per_config;
END
$fn$;

-- The released name hands over (same arguments, same rows).
CREATE OR REPLACE FUNCTION historical_db.recent_records_v1(
    configs text[], per_config bigint, as_of date, path text[], strategy_ids text[]
) RETURNS TABLE (as_of_date date, env_key bigint, config_id text, value double precision)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.recent_records_v2(configs, per_config, as_of, path, strategy_ids)
$fn$;
