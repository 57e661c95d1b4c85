-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- metaspace's suggestions, version 6 (revision 0017): version 5's ranking, arguments and columns exactly,
-- cut into parts that later versions share instead of copying them. Nothing is ranked differently (the
-- tests compare it with version 5 on the same runs).
--
-- * suggest_args_v1: the checks of the arguments; the objective as a path inside outcome.
-- * suggest_evidence_v1: everything about each candidate that does not depend on the local scale: the
--   neighbourhood, the records, their variances, and the local weight estimated at the date (and, switched
--   on by version 7, what a search's history is answered with).
-- * suggest_ranking_v1: the last step, for one or several local scales at once: each candidate's score,
--   raw confidence and rank at each scale. evaluate's replay asks it for every scale of its grid in one
--   call, so the ranking's arithmetic lives here alone (metaspace/calibration.py only fits).
-- * suggest_calibration_v1: the stored calibration an answer as of a date applies.
-- * suggest_configs_v6: the four above, in version 5's order; suggest_for_env_v5 is the same on a JSON env.
--
-- What is new beside version 5's answer: an objective that no run known by the date reports is an error
-- (SQLSTATE 22023) naming the outcome keys that exist, instead of an empty answer; and an empty answer
-- raises a NOTICE that says why and what to change. The command line shows the same reasons as notes.
-- A later version that changes one part writes that part's _v2 and reuses the others.

-- What one candidate brings to the ranking, before the local scale (signed so that higher is better).
CREATE TYPE historical_db.suggest_evidence_v1 AS (
    config_id           text,
    config              jsonb,
    weighted_objective  double precision,
    runs                integer,
    mean_distance       double precision,
    objective_mean      double precision,
    objective_std       double precision,
    best_run_id         text,
    best_objective      double precision,
    candidates          integer,
    environments        integer,
    rel                 double precision,  -- relative objective in the neighbourhood
    prior               double precision,  -- the record (NULL: it never ran beside another candidate)
    record_blocks       integer,
    base                double precision,  -- the record shrunk toward the candidates' mean
    base_var            double precision,
    local_var           double precision,
    environment_var     double precision,  -- one environment's spread
    estimated_local_weight double precision  -- the local weight at local scale 1 (version 4's)
);

-- One candidate at one local scale: the ranking's last step.
CREATE TYPE historical_db.suggest_rank_v1 AS (
    local_scale    double precision,
    rank           integer,
    config_id      text,
    local_weight   double precision,
    score          double precision,  -- expected objective above the candidates' mean, signed: higher is better
    edge_z         double precision,
    raw_confidence double precision
);

-- The checks every suggest function makes; returns the objective's path inside outcome.
CREATE FUNCTION historical_db.suggest_args_v1(
    env vector, k integer, objective text, higher_is_better boolean, neighbours integer, min_runs integer,
    eligible_configs text[], history integer, horizon integer, local_scale double precision
) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    path text[];
BEGIN
    IF env IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'the env vector is NULL';
    END IF;
    PERFORM historical_db.check_search_args_v1(env, k, 'env');
    PERFORM historical_db.check_search_args_v1(NULL, neighbours, 'env', 10000);
    IF min_runs IS NULL OR min_runs < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'min_runs must be 1 or more, got ' || coalesce(min_runs::text, 'NULL');
    END IF;
    IF higher_is_better IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'higher_is_better is NULL';
    END IF;
    IF history IS NOT NULL AND history < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'history must be 1 or more runs (or NULL for all), got ' || history;
    END IF;
    IF horizon IS NOT NULL AND horizon < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'horizon must be 1 or more days (or NULL to read the runs'' test_start), got ' || horizon;
    END IF;
    IF eligible_configs IS NOT NULL AND cardinality(eligible_configs) IS DISTINCT FROM array_length(eligible_configs, 1)
       OR cardinality(eligible_configs) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'eligible_configs must be a non-empty one-dimensional array of config ids (or NULL for all)';
    END IF;
    IF local_scale IS NOT NULL AND NOT (local_scale >= 0 AND local_scale <= 1) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'local_scale must be between 0 and 1 (or NULL for the calibration''s), got ' || local_scale;
    END IF;
    path := string_to_array(regexp_replace(coalesce(objective, ''), '^outcome[.]', ''), '.');
    IF coalesce(cardinality(path), 0) = 0 OR '' = ANY (path) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'objective ' || coalesce(quote_literal(objective), 'NULL')
                      || ' is not an outcome key (for example sharpe, or outcome.risk.sortino)';
    END IF;
    RETURN path;
END
$fn$;

-- Dotted numeric leaves of outcome over a sample of the runs known by a date (2,000 runs), most common
-- first: what an error about an unknown objective lists.
CREATE FUNCTION historical_db.outcome_keys_v1(as_of date) RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    WITH RECURSIVE sample AS (
        SELECT r.outcome FROM historical_db.runs r
        WHERE as_of IS NULL OR r.as_of_date <= as_of
        LIMIT 2000
    ), leaves (key, value, depth) AS (
        SELECT e.key, e.value, 0 FROM sample s CROSS JOIN LATERAL jsonb_each(
            CASE WHEN jsonb_typeof(s.outcome) = 'object' THEN s.outcome ELSE '{}' END) e
        UNION ALL
        SELECT l.key || '.' || e.key, e.value, l.depth + 1
        FROM leaves l CROSS JOIN LATERAL jsonb_each(l.value) e
        WHERE jsonb_typeof(l.value) = 'object' AND l.depth < 16
    )
    SELECT coalesce(array_agg(k.key ORDER BY k.n DESC, k.key), '{}')
    FROM (SELECT l.key, count(*) AS n FROM leaves l WHERE jsonb_typeof(l.value) = 'number' GROUP BY l.key) k
$fn$;

-- The calibration an answer as of a date applies: the latest of this objective, direction and encoder
-- version fitted on or before the date (any, without a date); NULL fields without one. Point in time: a
-- calibration fitted on decisions realised after as_of is never read.
CREATE FUNCTION historical_db.suggest_calibration_v1(
    path text[], higher_is_better boolean, of_version integer, as_of date
) RETURNS historical_db.suggest_calibrations
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT c.* FROM historical_db.suggest_calibrations c
    WHERE c.objective = array_to_string(path, '.') AND c.higher_is_better = suggest_calibration_v1.higher_is_better
      AND c.encoder_version = of_version AND (as_of IS NULL OR c.fitted_until <= as_of)
    ORDER BY c.fitted_until DESC LIMIT 1
$fn$;

-- The evidence behind each candidate config for a target environment, as of a date (never a run dated
-- after it): version 5's ranking up to its local weight. The arguments are suggest_configs_v6's, checked;
-- path is the objective inside outcome, direction +1 (higher is better) or -1.
--
--   The `neighbours` nearest runs in env space (of_version, as of the date; nearest_runs_v2: the env
--   space's graph, halfvec or float32, or the exact scan) are grouped into environments (one env object at
--   one as_of_date). Candidates: configs with min_runs or more neighbouring environments (and in
--   eligible_configs, if given). A candidate's relative objective in an environment is its objective minus
--   the mean of the candidates run there (where it ran alone among them: minus their mean nearby).
--   Environments fall into blocks of one outcome window (the runs' as_of_date - test_start, or horizon).
--   prior (history_objective): the candidate's relative objective, on the same yardstick, over its latest
--   runs known at the date (`history` runs shared equally among the candidates, whole dates; NULL: all),
--   per block, then over blocks; record_blocks: how many blocks.
--   rel (relative_objective): its relative objective in the neighbourhood, weighted by env similarity
--   (Gaussian kernel of the env distance, bandwidth the 10th percentile of the neighbour distances,
--   weights below exp(-300) taken as that), per block, then over blocks.
--   base: the prior shrunk toward the candidates' mean by its blocks of evidence (empirical Bayes);
--   estimated_local_weight = tau2 / (tau2 + local_var), local_var the variance of the local estimate
--   (one neighbouring block's spread around its config's local mean, pooled, over the config's effective
--   number of blocks nearby), tau2 the mean square of the local departures from the base less its noise.
--   search_histories: where no run near carries an outcome window and no horizon is given, answer as a search's
--   history asks (suggest_configs_v7, sql/suggest_v7.sql: blocks are environments, objectives in each
--   environment's spread, evidence counted by nearness, no record); false answers as version 5 everywhere
--   (suggest_configs_v6). With it, in every history, where no variance can be estimated the candidates'
--   spread stands in (version 5 floored such variances at 1e-12: confidences of 1.0 from one run).
CREATE FUNCTION historical_db.suggest_evidence_v1(
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


-- The ranking's last step, at each of several local scales (0 = the record alone, 1 = version 4):
--   local_weight = local_scale * estimated_local_weight;
--   expected = base + local_weight * (rel - base); score = expected minus the candidates' mean of it;
--   raw_confidence = Phi(score / sqrt(environment_var + (1 - local_weight)^2 base_var + local_weight local_var)),
--   the probability that the config beats the candidates' mean in one new environment (0.5: a coin flip);
--   edge_z: the local edge over the candidates' mean in standard errors; rank 1 is the best (ties: the
--   smaller config_id).
CREATE FUNCTION historical_db.suggest_ranking_v1(
    evidence historical_db.suggest_evidence_v1[], local_scales double precision[]
) RETURNS SETOF historical_db.suggest_rank_v1
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    WITH compared AS (
        SELECT s.scale, e.config_id, e.rel, e.local_var, e.environment_var, s.scale * e.estimated_local_weight AS lambda,
               e.base + s.scale * e.estimated_local_weight * (e.rel - e.base) AS expected,
               (1 - s.scale * e.estimated_local_weight) ^ 2 * e.base_var
                   + s.scale * e.estimated_local_weight * e.local_var AS posterior_var
        FROM unnest(evidence) e CROSS JOIN unnest(local_scales) AS s (scale)
    ), ranked AS (
        SELECT c.*, c.expected - avg(c.expected) OVER (PARTITION BY c.scale) AS edge,
               (c.rel - avg(c.rel) OVER (PARTITION BY c.scale)) / sqrt(c.local_var) AS z
        FROM compared c
    )
    SELECT r.scale, (row_number() OVER (PARTITION BY r.scale ORDER BY r.edge DESC, r.config_id))::integer,
           r.config_id, r.lambda, r.edge, r.z,
           historical_db.normal_cdf_v1(r.edge / sqrt(r.environment_var + r.posterior_var))
    FROM ranked r
$fn$;

-- Why an answer is empty, and what to change: raised as a NOTICE by the suggest functions (and shown by
-- the command line as a note). An objective no run known by the date reports is not a reason but an error.
CREATE FUNCTION historical_db.suggest_empty_v1(
    env vector, as_of date, path text[], neighbours integer, min_runs integer, strategy_ids text[],
    exact boolean, eligible_configs text[], of_version integer
) RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    known boolean;
    near integer;
    reporting integer;
    configs integer;
    best integer;
BEGIN
    SELECT EXISTS (SELECT 1 FROM historical_db.runs r WHERE as_of IS NULL OR r.as_of_date <= as_of) INTO known;
    IF NOT known THEN
        RAISE NOTICE USING MESSAGE = 'no suggestion: no run is dated on or before ' || as_of,
            HINT = 'Ask as of a later date (the earliest run is dated '
                   || coalesce((SELECT min(r.as_of_date)::text FROM historical_db.runs r), 'never') || ').';
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM historical_db.runs r
                   WHERE (as_of IS NULL OR r.as_of_date <= as_of) AND jsonb_typeof(r.outcome #> path) = 'number') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'objective outcome.' || array_to_string(path, '.') || ': no run'
                      || CASE WHEN as_of IS NULL THEN '' ELSE ' dated on or before ' || as_of END
                      || ' reports it as a number',
            HINT = 'Outcome keys that exist: ' || coalesce(nullif(array_to_string(
                       (historical_db.outcome_keys_v1(as_of))[1:12], ', '), ''), 'none') || '.';
    END IF;
    SELECT count(*)::integer, count(*) FILTER (WHERE jsonb_typeof(r.outcome #> path) = 'number')::integer,
           count(DISTINCT coalesce(m.config_id, m.run_id)) FILTER (WHERE jsonb_typeof(r.outcome #> path) = 'number')::integer
    INTO near, reporting, configs
    FROM historical_db.nearest_runs_v2(env, neighbours, 'env', of_version, as_of, strategy_ids, NULL, NULL, exact) m
    JOIN historical_db.runs r ON r.run_id = m.run_id;
    IF reporting = 0 THEN
        RAISE NOTICE USING MESSAGE = 'no suggestion: none of the ' || near || ' runs nearest this environment'
                                     || ' reports outcome.' || array_to_string(path, '.'),
            HINT = CASE WHEN strategy_ids IS NULL THEN 'Raise neighbours, or ask another objective.'
                        ELSE 'Raise neighbours, or drop the strategy filter.' END;
        RETURN;
    END IF;
    SELECT max(c.n)::integer INTO best FROM (
        SELECT count(DISTINCT (r.as_of_date, jsonb_hash_extended(r.env, 0))) AS n
        FROM historical_db.nearest_runs_v2(env, neighbours, 'env', of_version, as_of, strategy_ids, NULL, NULL, exact) m
        JOIN historical_db.runs r ON r.run_id = m.run_id
        WHERE jsonb_typeof(r.outcome #> path) = 'number'
          AND (eligible_configs IS NULL OR coalesce(m.config_id, m.run_id) = ANY (eligible_configs))
        GROUP BY coalesce(m.config_id, m.run_id)) c;
    RAISE NOTICE USING MESSAGE = 'no suggestion: of the ' || configs || ' configs in the ' || reporting
                                 || ' runs nearest this environment, '
                                 || CASE WHEN best IS NULL THEN 'none is among the eligible configs'
                                         ELSE 'none ran in ' || min_runs || ' or more environments (at most '
                                              || best || ')' END,
        HINT = CASE WHEN best IS NULL THEN 'Widen eligible_configs.'
                    ELSE 'Lower min_runs to ' || greatest(best, 1) || ', or raise neighbours.' END;
END
$fn$;

CREATE FUNCTION historical_db.suggest_configs_v6(
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
    scale double precision;
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
    scale := coalesce(local_scale, fitted.local_scale, 1);
    SELECT coalesce(array_agg(e), '{}') INTO evidence
    FROM historical_db.suggest_evidence_v1(env, as_of, path, direction, neighbours, min_runs, strategy_ids, exact,
                                           eligible_configs, active, history, horizon, false) e;
    IF cardinality(evidence) = 0 THEN
        PERFORM historical_db.suggest_empty_v1(env, as_of, path, neighbours, min_runs, strategy_ids, exact,
                                               eligible_configs, active);
        RETURN;
    END IF;
    RETURN QUERY
    SELECT e.config_id, e.config, direction * r.score, e.weighted_objective, e.runs, e.mean_distance,
           e.objective_mean, e.objective_std, e.best_run_id, e.best_objective, r.edge_z,
           historical_db.calibrated_confidence_v1(r.raw_confidence, fitted.confidence_from, fitted.confidence_to),
           e.candidates, e.environments, direction * e.rel, direction * e.prior, e.record_blocks, r.local_weight,
           e.estimated_local_weight, scale, direction * e.base, e.base_var, e.local_var, e.environment_var,
           r.raw_confidence, fitted.fitted_until
    FROM unnest(evidence) e
    JOIN historical_db.suggest_ranking_v1(evidence, ARRAY[scale]) r ON r.config_id = e.config_id
    ORDER BY r.rank
    LIMIT k;
END
$fn$;

-- Configs that worked in environments like a JSON env (a bare env object, or a run record with one), as of
-- a date: suggest_configs_v6 on the env encoded inside the database, with the version it was encoded with.
CREATE FUNCTION historical_db.suggest_for_env_v5(
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
    RETURN QUERY SELECT * FROM historical_db.suggest_configs_v6(
        historical_db.encode_v1('env', env, version), k, historical_db.record_as_of_v1(env, as_of), objective,
        higher_is_better, neighbours, min_runs, strategy_ids, exact, NULL, version, history, horizon);
END
$fn$;
