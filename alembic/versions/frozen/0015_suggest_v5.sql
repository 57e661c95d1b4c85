-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- metaspace's suggestions, version 5. Installed by revision 0015 beside versions 1 to 4, with the table it
-- reads, historical_db.suggest_calibrations. Measured with `metaspace evaluate`: docs/suggestions.md.
--
-- Version 4's ranking, with two things fitted on the replayed past instead of assumed:
-- * local_scale: how far the neighbourhood moves each config's record. v4 lets the local departure through
--   by local_weight, estimated from the data at the date; v5 multiplies that by a scale (0 = the record
--   alone, 1 = v4) chosen by the replay of past decisions whose outcomes were known at the date: where the
--   departures have stopped predicting (a change of regime), the record stands.
-- * the confidence map: deflated_confidence is v4's raw confidence passed through a monotone map, fitted on
--   the same past decisions (how often a pick at that raw confidence beat the random pick), so that 0.5
--   is a coin flip and 0.8 wins four times in five.
-- Both come from historical_db.suggest_calibrations, written by `metaspace evaluate --save-calibration`:
-- the latest row fitted on or before the answer's as_of date (never one fitted on decisions realised after
-- it), for the objective, direction and active encoder version. With none, v5 answers as v4 does, and
-- calibrated_until says so (NULL).

CREATE TYPE historical_db.config_suggestion_v5 AS (
    config_id           text,
    config              jsonb,
    score               double precision,
    weighted_objective  double precision,
    runs                integer,
    mean_distance       double precision,
    objective_mean      double precision,
    objective_std       double precision,
    best_run_id         text,
    best_objective      double precision,
    edge_z              double precision,
    deflated_confidence double precision,
    candidates          integer,
    environments        integer,
    relative_objective  double precision,
    history_objective   double precision,
    history_blocks      integer,
    local_weight        double precision,
    estimated_local_weight double precision,
    local_scale         double precision,
    record_estimate     double precision,
    record_var          double precision,
    local_var           double precision,
    environment_var     double precision,
    raw_confidence      double precision,
    calibrated_until    date
);

-- A raw confidence through a calibration's map: linear between its knots (raw_from increasing, to
-- non-decreasing), the end values beyond them. NULL map: the raw confidence itself.
CREATE FUNCTION historical_db.calibrated_confidence_v1(raw double precision, raw_from double precision[],
                                                       calibrated_to double precision[])
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT CASE
        WHEN raw IS NULL OR raw_from IS NULL OR cardinality(raw_from) = 0 THEN raw
        WHEN raw <= raw_from[1] THEN calibrated_to[1]
        WHEN raw >= raw_from[cardinality(raw_from)] THEN calibrated_to[cardinality(raw_from)]
        ELSE (SELECT calibrated_to[i] + (calibrated_to[i + 1] - calibrated_to[i])
                                        * (raw - raw_from[i]) / (raw_from[i + 1] - raw_from[i])
              FROM generate_subscripts(raw_from, 1) AS i
              WHERE raw_from[i] <= raw AND raw < raw_from[i + 1]
              ORDER BY i LIMIT 1)
    END
$fn$;

-- Configs suggested for a target environment, as of a date (never a run dated after it).
--
--   The `neighbours` nearest runs in env space (active encoder version, as of the date; nearest_runs_v2, the
--   path of the v3 searches: the env space's graph, halfvec or float32, or the exact scan) are grouped into
--   environments (one env object at one as_of_date). Candidates: configs with min_runs or more neighbouring
--   environments (and in eligible_configs, if given). A candidate's relative objective in an environment is
--   its objective minus the mean of the candidates run there (where it ran alone among them: minus their
--   mean nearby). Environments fall into blocks of one outcome window.
--   history_objective: the candidate's relative objective, on the same yardstick, over its latest runs
--   known at the date (`history` runs shared equally among the candidates, whole dates; NULL: all of
--   them), averaged per block, then over blocks; history_blocks: how many blocks.
--   relative_objective: its relative objective in the neighbourhood, weighted by env similarity (Gaussian
--   kernel of the env distance, bandwidth the 10th percentile of the neighbour distances, weights below
--   exp(-300) taken as that: they are nil, and PostgreSQL raises on an underflow), per block, then over blocks.
--   score (the ranking), empirical Bayes in two steps:
--     base = the history_objective shrunk toward the candidates' mean by its blocks of evidence;
--     expected = base + local_weight * (relative_objective - base), local_weight = tau2 / (tau2 + s2 / n),
--     s2 the variance of one neighbouring block's relative objective around its config's local mean
--     (pooled over the candidates), n the config's effective number of blocks nearby, tau2 the mean
--     square of the candidates' local departures from their base less its noise part;
--     score = expected minus the candidates' mean of it: the expected objective above a random pick.
--   As version 4, except:
--     local_weight = local_scale * estimated_local_weight (v4's local_weight, estimated from the data at the
--     date); local_scale: the argument, else the calibration's, else 1 (v4);
--     raw_confidence: v4's deflated_confidence at that local_weight,
--     Phi(score / sqrt(environment_var + (1 - local_weight)^2 record_var + local_weight local_var));
--     deflated_confidence: raw_confidence through the calibration's map (the raw one without a calibration):
--     how often a pick at that raw confidence beat the random pick over the past decisions replayed.
--   The calibration: the latest row of historical_db.suggest_calibrations for this objective, direction and
--   the active encoder version fitted on or before as_of (any, when as_of is NULL); calibrated => false
--   reads none. calibrated_until: its fitted_until (NULL: none was used).
--   record_estimate (the base, in the objective's units, relative to the candidates), record_var (its
--   variance), local_var (the local estimate's variance) and environment_var (one environment's spread)
--   are what the score and raw confidence are made of, so that a replay can score other local scales.
--   edge_z: the local edge over the candidates' mean in standard errors, signed so that positive is better.
CREATE FUNCTION historical_db.suggest_configs_v5(
    env vector, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 1000, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false, eligible_configs text[] DEFAULT NULL,
    encoder_version integer DEFAULT NULL, history integer DEFAULT 20000, horizon integer DEFAULT NULL,
    local_scale double precision DEFAULT NULL, calibrated boolean DEFAULT true
) RETURNS SETOF historical_db.config_suggestion_v5
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
-- Planned for each call's own arguments: a generic plan of the records' read (after five calls) was 3x slower.
SET plan_cache_mode = 'force_custom_plan'
AS $fn$
DECLARE
    path text[];
    direction double precision := CASE WHEN higher_is_better THEN 1 ELSE -1 END;
    active integer := historical_db.active_encoder_version_v1();
    fitted historical_db.suggest_calibrations;
    scale double precision;
BEGIN
    IF encoder_version IS NOT NULL AND encoder_version <> active THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'encoder version ' || encoder_version || ' was asked for, but version ' || active
                      || ' is active',
            HINT = 'Encode the env with the active version (or activate version ' || encoder_version || ').';
    END IF;
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
    path := string_to_array(regexp_replace(coalesce(objective, ''), '^outcome[.]', ''), '.');
    IF coalesce(cardinality(path), 0) = 0 OR '' = ANY (path) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'objective ' || coalesce(quote_literal(objective), 'NULL')
                      || ' is not an outcome key (for example sharpe, or outcome.risk.sortino)';
    END IF;
    IF local_scale IS NOT NULL AND NOT (local_scale >= 0 AND local_scale <= 1) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'local_scale must be between 0 and 1 (or NULL for the calibration''s), got ' || local_scale;
    END IF;
    IF coalesce(calibrated, true) THEN
        -- Point in time: a calibration fitted on decisions realised after as_of is never read.
        SELECT c.* INTO fitted FROM historical_db.suggest_calibrations c
        WHERE c.objective = array_to_string(path, '.') AND c.higher_is_better = suggest_configs_v5.higher_is_better
          AND c.encoder_version = active AND (as_of IS NULL OR c.fitted_until <= as_of)
        ORDER BY c.fitted_until DESC LIMIT 1;
    END IF;
    scale := coalesce(local_scale, fitted.local_scale, 1);
    RETURN QUERY
    WITH near AS (
        SELECT m.run_id, m.config_id, m.distance
        FROM historical_db.nearest_runs_v2(env, neighbours, 'env', active, as_of, strategy_ids, NULL, NULL, exact) m
    ), scored AS (
        SELECT n.run_id, coalesce(n.config_id, n.run_id) AS config_id, n.distance, r.config, r.as_of_date,
               jsonb_hash_extended(r.env, 0) AS env_key, (r.outcome #>> path)::double precision AS value,
               CASE WHEN jsonb_typeof(r.extra -> 'test_start') = 'string'
                         AND pg_input_is_valid(r.extra ->> 'test_start', 'date')
                    THEN r.as_of_date - (r.extra ->> 'test_start')::date END AS window_days
        FROM near n JOIN historical_db.runs r ON r.run_id = n.run_id
        WHERE jsonb_typeof(r.outcome #> path) = 'number'
    ), bandwidth AS (
        -- The kernel's bandwidth: the 10th percentile of the neighbour distances (v2's median let most of a
        -- small history in with nearly equal weight). One block of evidence: one outcome window (the runs'
        -- median; a day where they carry no test_start).
        SELECT greatest(percentile_cont(0.1) WITHIN GROUP (ORDER BY s.distance), 1e-9) AS h,
               coalesce(horizon, greatest(1, coalesce(
                   percentile_disc(0.5) WITHIN GROUP (ORDER BY s.window_days) FILTER (WHERE s.window_days > 0), 1)))
                   AS block_days
        FROM scored s
    ), cells AS (
        -- One piece of evidence per config and environment, however often it ran there.
        SELECT s.as_of_date, s.env_key, s.config_id, avg(s.value) AS value, min(s.distance) AS distance
        FROM scored s GROUP BY s.as_of_date, s.env_key, s.config_id
    ), wanted AS (
        -- The candidates: configs seen in min_runs or more neighbouring environments (and eligible, if given).
        SELECT c.config_id FROM cells c
        WHERE eligible_configs IS NULL OR c.config_id = ANY (eligible_configs)
        GROUP BY c.config_id HAVING count(*) >= min_runs
    ), relative AS (
        -- Each candidate against the other candidates run in the same environment (the configs a pick is
        -- made among, and the same yardstick as the records below); alone there, against their mean nearby.
        SELECT c.config_id, floor((c.as_of_date - date '2000-01-03')::double precision / b.block_days) AS block,
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
        -- The history read for the records: each candidate's latest runs known at the date, history runs in
        -- all (shared equally), whole dates (a date's runs are all kept or all left: never chosen by how
        -- their run_ids sort), found on the index on (coalesce(config_id, run_id), as_of_date).
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
        -- Only environments where two or more configs ran say how configs compare.
        SELECT h.config_id, floor((h.as_of_date - date '2000-01-03')::double precision / b.block_days) AS block,
               h.value - avg(h.value) OVER e AS rel, count(*) OVER e AS tried
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
        -- One block's relative objective around its config's record, pooled over configs.
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
        SELECT g.*, e.environments, direction * e.relative_objective AS rel,
               direction * h.prior AS prior, coalesce(h.blocks, 0) AS record_blocks
        FROM groups g JOIN evidence e ON e.config_id = g.config_id LEFT JOIN records h ON h.config_id = g.config_id
        WHERE e.environments >= min_runs AND (eligible_configs IS NULL OR g.config_id = ANY (eligible_configs))
    ), spread AS (
        SELECT (SELECT sum((direction * r.rel - c.rel) ^ 2) / nullif(count(*) - count(DISTINCT r.config_id), 0)
                FROM relative r JOIN candidate c ON c.config_id = r.config_id) AS one_env_s2,
               (SELECT sum((direction * l.rel - c.rel) ^ 2) / nullif(count(*) - count(DISTINCT l.config_id), 0)
                FROM local_blocks l JOIN candidate c ON c.config_id = l.config_id) AS local_s2,
               (SELECT avg(c.prior) FROM candidate c) AS prior_centre,
               (SELECT avg(c.rel) FROM candidate c) AS centre,
               (SELECT count(*) FROM candidate c)::integer AS candidates
    ), noise AS (
        -- es2: one environment's spread (the confidence's yardstick); ls2: one block of the neighbourhood
        -- around its config's local mean (what the local estimate's noise is made of; where no candidate
        -- has two blocks nearby, a block of the record stands in); bs2: one block of the record.
        SELECT s.prior_centre, s.centre, s.candidates,
               greatest(coalesce(s.one_env_s2, 0), 1e-12) AS es2,
               greatest(coalesce(s.local_s2, h.block_s2, s.one_env_s2, 0), 1e-12) AS ls2,
               greatest(coalesce(h.block_s2, s.local_s2, s.one_env_s2, 0), 1e-12) AS bs2
        FROM spread s CROSS JOIN history_noise h
    ), local_noise AS (
        -- The variance of a config's local estimate: a block's noise, weighted as the estimate weighs blocks.
        SELECT l.config_id, n.ls2 * sum(l.w ^ 2) / nullif(sum(l.w) ^ 2, 0) AS v
        FROM local_blocks l CROSS JOIN noise n GROUP BY l.config_id, n.ls2
    ), prior_fit AS (
        -- tau2 of the records: their spread over the candidates less its noise part.
        SELECT n.*, greatest((SELECT var_samp(c.prior) - avg(n.bs2 / greatest(c.record_blocks, 1))
                              FROM candidate c WHERE c.prior IS NOT NULL), 1e-6 * n.bs2) AS prior_tau2
        FROM noise n
    ), shrunk AS (
        -- A config with no record (it never ran beside another) starts from the candidates' local mean.
        SELECT c.*, p.candidates, p.es2, p.bs2, greatest(ln.v, 1e-12) AS local_var,
               CASE WHEN c.prior IS NULL THEN p.centre
                    ELSE p.prior_centre + (c.prior - p.prior_centre) * p.prior_tau2
                                          / (p.prior_tau2 + p.bs2 / c.record_blocks) END AS base,
               CASE WHEN c.prior IS NULL THEN p.prior_tau2
                    ELSE 1 / (1 / p.prior_tau2 + c.record_blocks / p.bs2) END AS base_var
        FROM candidate c CROSS JOIN prior_fit p JOIN local_noise ln ON ln.config_id = c.config_id
    ), departure AS (
        -- tau2 of the local departures: their mean square over the candidates less its noise part (the local
        -- estimate's and the base's: a config without a record has only the candidates' mean as its base).
        SELECT greatest(avg((s.rel - s.base) ^ 2) - avg(s.local_var + s.base_var), 1e-6 * avg(s.local_var)) AS tau2
        FROM shrunk s
    ), posterior AS (
        SELECT s.*, d.tau2 / (d.tau2 + s.local_var) AS estimated, scale * d.tau2 / (d.tau2 + s.local_var) AS lambda
        FROM shrunk s CROSS JOIN departure d
    ), compared AS (
        SELECT p.*, p.base + p.lambda * (p.rel - p.base) AS expected,
               (1 - p.lambda) ^ 2 * p.base_var + p.lambda * p.local_var AS posterior_var
        FROM posterior p
    ), ranked AS (
        SELECT c.*, c.expected - avg(c.expected) OVER () AS edge,
               (c.rel - avg(c.rel) OVER ()) / sqrt(c.local_var) AS z
        FROM compared c
    )
    SELECT c.config_id, c.config, direction * c.edge, c.weighted_objective, c.runs, c.mean_distance,
           c.objective_mean, c.objective_std, c.best_run_id, c.best_objective, c.z,
           historical_db.calibrated_confidence_v1(c.raw_confidence, fitted.confidence_from, fitted.confidence_to),
           c.candidates, c.environments, direction * c.rel, direction * c.prior, c.record_blocks, c.lambda,
           c.estimated, scale, direction * c.base, c.base_var, c.local_var, c.es2, c.raw_confidence,
           fitted.fitted_until
    FROM (SELECT r.*, historical_db.normal_cdf_v1(r.edge / sqrt(r.es2 + r.posterior_var)) AS raw_confidence
          FROM ranked r) c
    ORDER BY c.edge DESC, c.config_id
    LIMIT k;
END
$fn$;

-- Configs that worked in environments like a JSON env (a bare env object, or a run record with one), as of
-- a date: suggest_configs_v5 on the env encoded inside the database, with the version it was encoded with
-- (what `metaspace suggest` answers, for SQL clients; suggest_for_env_v3 stays on version 4).
CREATE FUNCTION historical_db.suggest_for_env_v4(
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
    RETURN QUERY SELECT * FROM historical_db.suggest_configs_v5(
        historical_db.encode_v1('env', env, version), k, historical_db.record_as_of_v1(env, as_of), objective,
        higher_is_better, neighbours, min_runs, strategy_ids, exact, NULL, version, history, horizon);
END
$fn$;
