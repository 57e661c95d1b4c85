-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- Suggestions on Citus (revision 0020, issue 26): suggest_evidence_v2 is suggest_evidence_v1 (sql/suggest_v6.sql)
-- with one step moved into a function of its own, recent_records_v1: each candidate config's newest runs (its
-- record), which v1 read with a LATERAL subquery per config ending in FETCH FIRST n ROWS WITH TIES. Citus plans
-- no LIMIT in a lateral subquery over a distributed table. suggest_evidence_v1 keeps its name, arguments and
-- results and hands over to v2, so every suggest function (suggest_configs, suggest_for_env, suggest_picks)
-- answers through it, on one server as before (floats within 1e-12: a sum may meet its terms in another order).
-- outcome_keys_v2 (what an empty answer lists) reads its sample before its recursive query, for the same reason.

-- Each config's newest runs known as of a date (as_of NULL: all) that report the objective at path as a number,
-- of the given strategies (NULL: all): for each config, its per_config newest runs, with every run as old as the
-- last one taken (ties); as (date, env key, config, objective). On one server a walk of runs_config_as_of per
-- config (the LATERAL read of version 1, unchanged); on Citus, where runs is distributed, the configs' runs
-- ranked by date in one query over the shards (every run of these configs is read: the index cannot stop each
-- config's read early there).
CREATE FUNCTION historical_db.recent_records_v1(
    configs text[], per_config bigint, as_of date, path text[], strategy_ids text[]
) RETURNS TABLE (as_of_date date, env_key bigint, config_id text, value double precision)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
SET plan_cache_mode = 'force_custom_plan'  -- (as suggest_evidence_v1: each call planned for its own arguments)
-- On one server each config's runs are read newest first from runs_config_as_of, the read stopping once
-- per_config rows (and their ties) are taken. The planner cannot know that nearly every run reports the
-- objective (it takes jsonb_typeof(...) = 'number' to keep one run in 200), so it read every run of each config
-- by a bitmap and sorted them: at 1,000,000 runs (40 configs of 25,000 runs each) 3.9 s a call against 21 ms
-- for the same rows read in index order (docs/benchmarks.md, issue 25).
SET enable_bitmapscan = off
SET enable_sort = off
AS $fn$
#variable_conflict use_column
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
    RETURN QUERY
    SELECT h.as_of_date, h.env_key, h.config_id, h.value FROM (
        SELECT r.as_of_date, jsonb_hash_extended(r.env, 0) AS env_key, coalesce(r.config_id, r.run_id) AS config_id,
               (r.outcome #>> path)::double precision AS value,
               rank() OVER (PARTITION BY coalesce(r.config_id, r.run_id) ORDER BY r.as_of_date DESC) AS newest
        FROM historical_db.runs r
        WHERE coalesce(r.config_id, r.run_id) = ANY (configs)
          AND (as_of IS NULL OR r.as_of_date <= as_of) AND jsonb_typeof(r.outcome #> path) = 'number'
          AND (strategy_ids IS NULL OR r.strategy_id = ANY (strategy_ids))
    ) h
    WHERE h.newest <= per_config;
END
$fn$;

-- suggest_evidence_v1's rule (sql/suggest_v6.sql, where every step is explained), its records read by
-- recent_records_v1.
CREATE FUNCTION historical_db.suggest_evidence_v2(
    env vector, as_of date, path text[], direction double precision, neighbours integer, min_runs integer,
    strategy_ids text[], exact boolean, eligible_configs text[], of_version integer, history integer,
    horizon integer, search_histories boolean
) RETURNS SETOF historical_db.suggest_evidence_v1
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
-- Planned for each call's own arguments: a generic plan of the records' read (after five calls) was 3x slower.
SET plan_cache_mode = 'force_custom_plan'
AS $fn$
    WITH near AS (
        SELECT m.run_id, m.config_id, m.distance
        FROM historical_db.nearest_runs_v2(env, neighbours, 'env', of_version, as_of, strategy_ids, NULL, NULL, exact) m
    ), scored AS (
        SELECT n.run_id, coalesce(n.config_id, n.run_id) AS config_id, n.distance, r.config, r.as_of_date,
               jsonb_hash_extended(r.env, 0) AS env_key, (r.outcome #>> path)::double precision AS value,
               CASE WHEN jsonb_typeof(r.extra -> 'test_start') = 'string'
                         AND pg_input_is_valid(r.extra ->> 'test_start', 'date')
                    THEN r.as_of_date - (r.extra ->> 'test_start')::date END AS window_days
        FROM near n JOIN historical_db.runs r ON r.run_id = n.run_id
        WHERE jsonb_typeof(r.outcome #> path) = 'number'
    ), bandwidth AS (
        SELECT greatest(percentile_cont(0.1) WITHIN GROUP (ORDER BY s.distance), 1e-9) AS h,
               coalesce(horizon, greatest(1, coalesce(
                   percentile_disc(0.5) WITHIN GROUP (ORDER BY s.window_days) FILTER (WHERE s.window_days > 0), 1)))
                   AS block_days,
               -- No run near carries an outcome window, and no horizon was given: a search's history (trials
               -- of studies, runs of experiments), not a calendar's.
               search_histories AND horizon IS NULL AND count(s.window_days) = 0 AS windowless
        FROM scored s
    ), raw_cells AS (
        SELECT s.as_of_date, s.env_key, s.config_id, avg(s.value) AS value, min(s.distance) AS distance
        FROM scored s GROUP BY s.as_of_date, s.env_key, s.config_id
    ), spread AS (
        -- One environment's spread of the objective over every config tried there (the yardstick that makes
        -- studies of other metrics comparable, where the history is windowless).
        SELECT c.as_of_date, c.env_key, stddev_samp(c.value) AS sd FROM raw_cells c GROUP BY c.as_of_date, c.env_key
    ), cells AS (
        SELECT c.as_of_date, c.env_key, c.config_id, c.value, c.distance
        FROM raw_cells c WHERE NOT (SELECT b.windowless FROM bandwidth b)
        UNION ALL
        SELECT c.as_of_date, c.env_key, c.config_id, c.value / coalesce(nullif(p.sd, 0), 1), c.distance
        FROM raw_cells c JOIN spread p USING (as_of_date, env_key) WHERE (SELECT b.windowless FROM bandwidth b)
    ), wanted AS (
        SELECT c.config_id FROM cells c
        WHERE eligible_configs IS NULL OR c.config_id = ANY (eligible_configs)
        GROUP BY c.config_id HAVING count(*) >= min_runs
    ), relative AS (
        SELECT c.config_id,
               CASE WHEN b.windowless THEN c.env_key::double precision
                    ELSE floor((c.as_of_date - date '2000-01-03')::double precision / b.block_days) END AS block,
               c.value - CASE WHEN count(*) OVER e >= 2 THEN avg(c.value) OVER e ELSE avg(c.value) OVER () END AS rel,
               exp(-least(0.5 * (c.distance / b.h) ^ 2, 300)) AS w
        FROM cells c JOIN wanted USING (config_id) CROSS JOIN bandwidth b
        WINDOW e AS (PARTITION BY c.as_of_date, c.env_key)
    ), local_blocks AS (
        SELECT r.config_id, r.block, sum(r.w * r.rel) / nullif(sum(r.w), 0) AS rel, sum(r.w) AS w, count(*) AS envs
        FROM relative r GROUP BY r.config_id, r.block
    ), evidence AS (
        SELECT l.config_id, sum(l.envs)::integer AS environments,
               sum(l.w * l.rel) / nullif(sum(l.w), 0) AS relative_objective
        FROM local_blocks l GROUP BY l.config_id
    ), recent AS (
        SELECT h.* FROM historical_db.recent_records_v1(
            ARRAY(SELECT w.config_id FROM wanted w),
            -- (no candidate: no record to read, and no division by zero wherever the planner evaluates this)
            coalesce(ceil(history::double precision / nullif((SELECT count(*) FROM wanted), 0))::bigint,
                     9223372036854775807),
            as_of, path, strategy_ids) h
    ), history_cells AS (
        SELECT h.as_of_date, h.env_key, h.config_id, avg(h.value) AS value
        FROM recent h GROUP BY h.as_of_date, h.env_key, h.config_id
    ), history_rel AS (
        SELECT h.config_id,
               CASE WHEN b.windowless THEN h.env_key::double precision
                    ELSE floor((h.as_of_date - date '2000-01-03')::double precision / b.block_days) END AS block,
               (h.value - avg(h.value) OVER e)
                   / CASE WHEN b.windowless THEN coalesce(nullif(stddev_samp(h.value) OVER e, 0), 1) ELSE 1 END AS rel,
               count(*) OVER e AS tried
        FROM history_cells h CROSS JOIN bandwidth b
        WINDOW e AS (PARTITION BY h.as_of_date, h.env_key)
    ), history_blocks AS (
        SELECT h.config_id, h.block, avg(h.rel) AS rel FROM history_rel h WHERE h.tried >= 2
        GROUP BY h.config_id, h.block
    ), records AS (
        SELECT h.config_id, avg(h.rel) AS prior, count(*)::integer AS blocks,
               greatest(sum(h.rel ^ 2) - count(*) * avg(h.rel) ^ 2, 0) AS between_ss
        FROM history_blocks h GROUP BY h.config_id
    ), history_noise AS MATERIALIZED (
        SELECT sum(h.between_ss) / nullif(sum(h.blocks) - count(*), 0) AS block_s2 FROM records h
    ), groups AS (
        SELECT s.config_id,
               count(*)::integer AS runs,
               avg(s.distance) AS mean_distance,
               avg(s.value) AS objective_mean,
               stddev_samp(s.value) AS objective_std,
               sum(exp(-least(0.5 * (s.distance / b.h) ^ 2, 300)) * s.value) / nullif(sum(exp(-least(0.5 * (s.distance / b.h) ^ 2, 300))), 0)
                   AS weighted_objective,
               (array_agg(s.run_id ORDER BY direction * s.value DESC, s.run_id))[1] AS best_run_id,
               (array_agg(s.value ORDER BY direction * s.value DESC, s.run_id))[1] AS best_objective,
               (array_agg(s.config ORDER BY direction * s.value DESC, s.run_id))[1] AS config
        FROM scored s CROSS JOIN bandwidth b
        GROUP BY s.config_id
    ), candidate AS (
        -- Where windowless, no record: a config's record is its runs in their own environments, near or far,
        -- the same evidence the neighbourhood weighs by nearness (a search's configs rarely run twice).
        SELECT g.*, e.environments, direction * e.relative_objective AS rel,
               CASE WHEN (SELECT b.windowless FROM bandwidth b) THEN NULL ELSE direction * h.prior END AS prior,
               CASE WHEN (SELECT b.windowless FROM bandwidth b) THEN 0 ELSE coalesce(h.blocks, 0) END AS record_blocks
        FROM groups g JOIN evidence e ON e.config_id = g.config_id LEFT JOIN records h ON h.config_id = g.config_id
        WHERE e.environments >= min_runs AND (eligible_configs IS NULL OR g.config_id = ANY (eligible_configs))
    ), variances AS (
        SELECT (SELECT sum((direction * r.rel - c.rel) ^ 2) / nullif(count(*) - count(DISTINCT r.config_id), 0)
                FROM relative r JOIN candidate c ON c.config_id = r.config_id) AS one_env_s2,
               -- (version 7 only: version 6 answers as version 5, whose variances floor at 1e-12)
               (SELECT var_samp(r.rel) FROM relative r JOIN candidate c ON c.config_id = r.config_id
                WHERE search_histories) AS rel_s2,
               (SELECT sum((direction * l.rel - c.rel) ^ 2) / nullif(count(*) - count(DISTINCT l.config_id), 0)
                FROM local_blocks l JOIN candidate c ON c.config_id = l.config_id) AS local_s2,
               (SELECT avg(c.prior) FROM candidate c) AS prior_centre,
               (SELECT avg(c.rel) FROM candidate c) AS centre,
               (SELECT count(*) FROM candidate c)::integer AS candidates
    ), noise AS (
        -- Where no variance can be estimated (every candidate seen once), the spread of the candidates'
        -- relative objectives stands in, so that no confidence comes from a zero variance. On a search's
        -- history (windowless) one trial's own noise cannot be told from the configs' differences: it is taken
        -- as a tenth of that spread (a search's trial measures its config well; a backtest's outcome window
        -- does not, and there the repeats say how much). There a config run in several environments (a warm
        -- start enqueues the best of the studies before) differs between them by its environments, which
        -- the kernel weighs, not by noise: its spread across them is not the noise of one trial (taken as
        -- noise, it drowned every departure: scores of 1e-6 and confidences of 0.5 for every config).
        SELECT s.prior_centre, s.centre, s.candidates,
               greatest(coalesce(s.one_env_s2, s.rel_s2, 0), 1e-12) AS es2,
               greatest(CASE WHEN b.windowless THEN 0.1 * s.rel_s2
                             ELSE coalesce(s.local_s2, h.block_s2, s.one_env_s2, s.rel_s2, 0) END, 1e-12) AS ls2,
               greatest(CASE WHEN b.windowless THEN 0.1 * s.rel_s2
                             ELSE coalesce(h.block_s2, s.local_s2, s.one_env_s2, s.rel_s2, 0) END, 1e-12) AS bs2
        FROM variances s CROSS JOIN history_noise h CROSS JOIN bandwidth b
    ), local_noise AS (
        -- Where windowless, evidence from an environment counts by how near it is: a block's variance over its
        -- kernel weight (a study far away says little of this one); otherwise blocks count alike, as in v6.
        SELECT l.config_id,
               CASE WHEN b.windowless THEN n.ls2 / greatest(sum(l.w), 1e-300)
                    ELSE n.ls2 * sum(l.w ^ 2) / nullif(sum(l.w) ^ 2, 0) END AS v,
               CASE WHEN b.windowless THEN least(sum(l.w), 1) ELSE 1 END AS nearness
        FROM local_blocks l CROSS JOIN noise n CROSS JOIN bandwidth b GROUP BY l.config_id, n.ls2, b.windowless
    ), prior_fit AS (
        SELECT n.*, greatest((SELECT var_samp(c.prior) - avg(n.bs2 / greatest(c.record_blocks, 1))
                              FROM candidate c WHERE c.prior IS NOT NULL), 1e-6 * n.bs2) AS prior_tau2
        FROM noise n
    ), shrunk AS (
        SELECT c.*, p.candidates, p.es2, greatest(ln.v, 1e-12) AS local_var, ln.nearness,
               CASE WHEN c.prior IS NULL THEN p.centre
                    ELSE p.prior_centre + (c.prior - p.prior_centre) * p.prior_tau2
                                          / (p.prior_tau2 + p.bs2 / c.record_blocks) END AS base,
               CASE WHEN c.prior IS NULL THEN p.prior_tau2
                    ELSE 1 / (1 / p.prior_tau2 + c.record_blocks / p.bs2) END AS base_var
        FROM candidate c CROSS JOIN prior_fit p JOIN local_noise ln ON ln.config_id = c.config_id
    ), departure AS (
        -- (Where windowless, over the candidates weighted by how near their evidence is: a far study's configs,
        -- whose local variance is large, would otherwise drown the departures measured near.)
        SELECT CASE WHEN b.windowless
                    THEN greatest(sum(s.nearness * (s.rel - s.base) ^ 2) / sum(s.nearness)
                                  - sum(s.nearness * (s.local_var + s.base_var)) / sum(s.nearness),
                                  1e-6 * sum(s.nearness * s.local_var) / sum(s.nearness))
                    ELSE greatest(avg((s.rel - s.base) ^ 2) - avg(s.local_var + s.base_var), 1e-6 * avg(s.local_var))
               END AS tau2
        FROM shrunk s CROSS JOIN bandwidth b GROUP BY b.windowless
    )
    SELECT s.config_id, s.config, s.weighted_objective, s.runs, s.mean_distance, s.objective_mean,
           s.objective_std, s.best_run_id, s.best_objective, s.candidates, s.environments, s.rel, s.prior,
           s.record_blocks, s.base, s.base_var, s.local_var, s.es2, d.tau2 / (d.tau2 + s.local_var)
    FROM shrunk s CROSS JOIN departure d
$fn$;

-- Dotted numeric leaves of outcome over a sample of the runs known by a date (2,000 runs), most common first
-- (outcome_keys_v1's rule): the sample read first, by a plain query, and its leaves found by a recursive query
-- over those values (Citus plans a recursive query over a distributed table only with a filter on run_id).
CREATE FUNCTION historical_db.outcome_keys_v2(as_of date) RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    outcomes jsonb[];
    keys text[];
BEGIN
    SELECT array_agg(s.outcome) INTO outcomes FROM (
        SELECT r.outcome FROM historical_db.runs r
        WHERE outcome_keys_v2.as_of IS NULL OR r.as_of_date <= outcome_keys_v2.as_of
        LIMIT 2000
    ) s;
    WITH RECURSIVE leaves (key, value, depth) AS (
        SELECT e.key, e.value, 0 FROM unnest(outcomes) AS s (outcome) CROSS JOIN LATERAL jsonb_each(
            CASE WHEN jsonb_typeof(s.outcome) = 'object' THEN s.outcome ELSE '{}' END) e
        UNION ALL
        SELECT l.key || '.' || e.key, e.value, l.depth + 1
        FROM leaves l CROSS JOIN LATERAL jsonb_each(l.value) e
        WHERE jsonb_typeof(l.value) = 'object' AND l.depth < 16
    )
    SELECT coalesce(array_agg(k.key ORDER BY k.n DESC, k.key), '{}') INTO keys
    FROM (SELECT l.key, count(*) AS n FROM leaves l WHERE jsonb_typeof(l.value) = 'number' GROUP BY l.key) k;
    RETURN keys;
END
$fn$;

-- The released names hand over (same arguments, same results).
CREATE OR REPLACE FUNCTION historical_db.outcome_keys_v1(as_of date) RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$ SELECT historical_db.outcome_keys_v2(as_of) $fn$;

CREATE OR REPLACE FUNCTION historical_db.suggest_evidence_v1(
    env vector, as_of date, path text[], direction double precision, neighbours integer, min_runs integer,
    strategy_ids text[], exact boolean, eligible_configs text[], of_version integer, history integer,
    horizon integer, search_histories boolean
) RETURNS SETOF historical_db.suggest_evidence_v1
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.suggest_evidence_v2(env, as_of, path, direction, neighbours, min_runs, strategy_ids,
                                                    exact, eligible_configs, of_version, history, horizon,
                                                    search_histories)
$fn$;
