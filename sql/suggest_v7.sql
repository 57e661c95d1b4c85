-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- metaspace's suggestions, version 7 (revision 0018): what version 6 answers wherever the runs near carry an
-- outcome window (a backtest's test_start, or a horizon given), and a ranking that works on the histories of
-- searches (Optuna studies, MLflow experiments: no outcome windows, configs that never repeat, every trial
-- of a study on one day), where version 6 ranked configs from the farthest study with a confidence of 1.0 and
-- an edge_z of 1e4 from one run each. Where no run near carries a window (windowless):
--
-- * blocks of evidence are environments (a study, an experiment), not calendar days;
-- * a config's objective is measured against the others of its environment in that environment's spread
--   (studies of different metrics and scales compare; a regression study's R^2 is not an accuracy);
-- * evidence counts by how near its environment is: a block's variance over its kernel weight, so a config
--   seen once in a study far away is shrunk to the candidates' mean, and one seen near stands; and no record
--   (a config's runs in their own environments, near or far, are the neighbourhood's evidence already);
-- * and, in both kinds of history, where a variance cannot be estimated (every candidate seen once) the
--   spread of the candidates' relative objectives stands in: no confidence comes from a zero variance.
--
-- The other parts are shared (suggest_v6.sql): the checks, the ranking at a local scale, the calibration
-- read, what an empty answer says. suggest_answer_v1 is the last step, shared from this version on.

-- The evidence behind each candidate: suggest_evidence_v1 (sql/suggest_v6.sql) with the changes above.
CREATE FUNCTION historical_db.suggest_evidence_v2(
    env vector, as_of date, path text[], direction double precision, neighbours integer, min_runs integer,
    strategy_ids text[], exact boolean, eligible_configs text[], of_version integer, history integer,
    horizon integer
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
               horizon IS NULL AND count(s.window_days) = 0 AS windowless
        FROM scored s
    ), raw_cells AS (
        SELECT s.as_of_date, s.env_key, s.config_id, avg(s.value) AS value, min(s.distance) AS distance
        FROM scored s GROUP BY s.as_of_date, s.env_key, s.config_id
    ), spread AS (
        -- One environment's spread of the objective over every config tried there (the yardstick that makes
        -- studies of other metrics comparable, where the history is windowless).
        SELECT c.as_of_date, c.env_key, stddev_samp(c.value) AS sd FROM raw_cells c GROUP BY c.as_of_date, c.env_key
    ), cells AS (
        SELECT c.as_of_date, c.env_key, c.config_id, c.distance,
               CASE WHEN b.windowless THEN c.value / coalesce(nullif(p.sd, 0), 1) ELSE c.value END AS value
        FROM raw_cells c JOIN spread p USING (as_of_date, env_key) CROSS JOIN bandwidth b
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
        SELECT h.*
        FROM wanted w
        CROSS JOIN LATERAL (
            SELECT r.as_of_date, jsonb_hash_extended(r.env, 0) AS env_key, w.config_id,
                   (r.outcome #>> path)::double precision AS value
            FROM historical_db.runs r
            WHERE coalesce(r.config_id, r.run_id) = w.config_id
              AND (as_of IS NULL OR r.as_of_date <= as_of) AND jsonb_typeof(r.outcome #> path) = 'number'
              AND (strategy_ids IS NULL OR r.strategy_id = ANY (strategy_ids))
            ORDER BY r.as_of_date DESC
            FETCH FIRST (coalesce(ceil(history::double precision / (SELECT count(*) FROM wanted))::bigint,
                               9223372036854775807)) ROWS WITH TIES
        ) h
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
               CASE WHEN b.windowless THEN NULL ELSE direction * h.prior END AS prior,
               CASE WHEN b.windowless THEN 0 ELSE coalesce(h.blocks, 0) END AS record_blocks
        FROM groups g JOIN evidence e ON e.config_id = g.config_id LEFT JOIN records h ON h.config_id = g.config_id
        CROSS JOIN bandwidth b
        WHERE e.environments >= min_runs AND (eligible_configs IS NULL OR g.config_id = ANY (eligible_configs))
    ), variances AS (
        SELECT (SELECT sum((direction * r.rel - c.rel) ^ 2) / nullif(count(*) - count(DISTINCT r.config_id), 0)
                FROM relative r JOIN candidate c ON c.config_id = r.config_id) AS one_env_s2,
               (SELECT var_samp(r.rel) FROM relative r JOIN candidate c ON c.config_id = r.config_id) AS rel_s2,
               (SELECT sum((direction * l.rel - c.rel) ^ 2) / nullif(count(*) - count(DISTINCT l.config_id), 0)
                FROM local_blocks l JOIN candidate c ON c.config_id = l.config_id) AS local_s2,
               (SELECT avg(c.prior) FROM candidate c) AS prior_centre,
               (SELECT avg(c.rel) FROM candidate c) AS centre,
               (SELECT count(*) FROM candidate c)::integer AS candidates
    ), noise AS (
        -- Where no variance can be estimated (every candidate seen once: a search's history), the spread of the
        -- candidates' relative objectives stands in, so that no confidence comes from a zero variance. One
        -- trial's own noise cannot be told from the configs' differences without repeats: it is taken as a
        -- tenth of that spread (a search's trial measures its config well; a backtest's outcome window does not,
        -- and there the repeats say how much).
        SELECT s.prior_centre, s.centre, s.candidates,
               greatest(coalesce(s.one_env_s2, s.rel_s2, 0), 1e-12) AS es2,
               greatest(coalesce(s.local_s2, h.block_s2, s.one_env_s2,
                                 CASE WHEN b.windowless THEN 0.1 ELSE 1 END * s.rel_s2, 0), 1e-12) AS ls2,
               greatest(coalesce(h.block_s2, s.local_s2, s.one_env_s2,
                                 CASE WHEN b.windowless THEN 0.1 ELSE 1 END * s.rel_s2, 0), 1e-12) AS bs2
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
        SELECT greatest(sum(s.nearness * (s.rel - s.base) ^ 2) / sum(s.nearness)
                        - sum(s.nearness * (s.local_var + s.base_var)) / sum(s.nearness),
                        1e-6 * sum(s.nearness * s.local_var) / sum(s.nearness)) AS tau2
        FROM shrunk s
    )
    SELECT s.config_id, s.config, s.weighted_objective, s.runs, s.mean_distance, s.objective_mean,
           s.objective_std, s.best_run_id, s.best_objective, s.candidates, s.environments, s.rel, s.prior,
           s.record_blocks, s.base, s.base_var, s.local_var, s.es2, d.tau2 / (d.tau2 + s.local_var)
    FROM shrunk s CROSS JOIN departure d
$fn$;


-- The answer: the evidence ranked at a local scale, through a calibration's map (fitted: NULL for none), best
-- first, k rows. direction: +1 when higher is better, -1 when lower.
CREATE FUNCTION historical_db.suggest_answer_v1(
    evidence historical_db.suggest_evidence_v1[], direction double precision, scale double precision,
    fitted historical_db.suggest_calibrations, k integer
) RETURNS SETOF historical_db.config_suggestion_v5
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT e.config_id, e.config, direction * r.score, e.weighted_objective, e.runs, e.mean_distance,
           e.objective_mean, e.objective_std, e.best_run_id, e.best_objective, r.edge_z,
           historical_db.calibrated_confidence_v1(r.raw_confidence, (fitted).confidence_from, (fitted).confidence_to),
           e.candidates, e.environments, direction * e.rel, direction * e.prior, e.record_blocks, r.local_weight,
           e.estimated_local_weight, scale, direction * e.base, e.base_var, e.local_var, e.environment_var,
           r.raw_confidence, (fitted).fitted_until
    FROM unnest(evidence) e
    JOIN historical_db.suggest_ranking_v1(evidence, ARRAY[scale]) r ON r.config_id = e.config_id
    ORDER BY r.rank
    LIMIT k
$fn$;

-- Configs suggested for a target environment, as of a date (never a run dated after it): suggest_configs_v6's
-- arguments and columns, over suggest_evidence_v2.
CREATE FUNCTION historical_db.suggest_configs_v7(
    env vector, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 1000, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false, eligible_configs text[] DEFAULT NULL,
    encoder_version integer DEFAULT NULL, history integer DEFAULT 20000, horizon integer DEFAULT NULL,
    local_scale double precision DEFAULT NULL, calibrated boolean DEFAULT true
) RETURNS SETOF historical_db.config_suggestion_v5
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    active integer := historical_db.active_encoder_version_v1();
    path text[];
    direction double precision := CASE WHEN higher_is_better THEN 1 ELSE -1 END;
    fitted historical_db.suggest_calibrations;
    evidence historical_db.suggest_evidence_v1[];
BEGIN
    IF encoder_version IS NOT NULL AND encoder_version <> active THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'encoder version ' || encoder_version || ' was asked for, but version ' || active
                      || ' is active',
            HINT = 'Encode the env with the active version (or activate version ' || encoder_version || ').';
    END IF;
    path := historical_db.suggest_args_v1(env, k, objective, higher_is_better, neighbours, min_runs,
                                          eligible_configs, history, horizon, local_scale);
    IF coalesce(calibrated, true) THEN
        fitted := historical_db.suggest_calibration_v1(path, higher_is_better, active, as_of);
    END IF;
    SELECT coalesce(array_agg(e), '{}') INTO evidence
    FROM historical_db.suggest_evidence_v2(env, as_of, path, direction, neighbours, min_runs, strategy_ids, exact,
                                           eligible_configs, active, history, horizon) e;
    IF cardinality(evidence) = 0 THEN
        PERFORM historical_db.suggest_empty_v1(env, as_of, path, neighbours, min_runs, strategy_ids, exact,
                                               eligible_configs, active);
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM historical_db.suggest_answer_v1(evidence, direction,
                                                               coalesce(local_scale, fitted.local_scale, 1), fitted, k);
END
$fn$;

-- The same on a JSON env (a bare env object, or a run record with one), encoded inside the database.
CREATE FUNCTION historical_db.suggest_for_env_v6(
    env jsonb, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 1000, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false, history integer DEFAULT 20000,
    horizon integer DEFAULT NULL
) RETURNS SETOF historical_db.config_suggestion_v5
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    version integer := historical_db.encoder_version_v1(NULL);
BEGIN
    RETURN QUERY SELECT * FROM historical_db.suggest_configs_v7(
        historical_db.encode_v1('env', env, version), k, historical_db.record_as_of_v1(env, as_of), objective,
        higher_is_better, neighbours, min_runs, strategy_ids, exact, NULL, version, history, horizon);
END
$fn$;

-- What metaspace evaluate replays at each past decision: among the configs tried there, the top suggestion
-- at each local scale of the calibration's grid and its raw confidence (uncalibrated), from the current
-- evidence and ranking. A stable name, so that a new ranking version changes nothing in Python.
CREATE FUNCTION historical_db.suggest_picks(
    env vector, as_of date, objective text, higher_is_better boolean, neighbours integer, min_runs integer,
    eligible_configs text[], exact boolean, horizon integer, local_scales double precision[],
    history integer DEFAULT 20000
) RETURNS TABLE (local_scale double precision, config_id text, raw_confidence double precision)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT r.local_scale, r.config_id, r.raw_confidence
    FROM historical_db.suggest_ranking_v1(ARRAY(
        SELECT e FROM historical_db.suggest_evidence_v2(
            env, as_of,
            historical_db.suggest_args_v1(env, 1, objective, higher_is_better, neighbours, min_runs, eligible_configs,
                                          history, horizon, NULL),
            CASE WHEN higher_is_better THEN 1 ELSE -1 END, neighbours, min_runs, NULL, exact, eligible_configs,
            historical_db.active_encoder_version_v1(), history, horizon) e), local_scales) r
    WHERE r.rank = 1
$fn$;
