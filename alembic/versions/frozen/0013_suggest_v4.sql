-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- metaspace's suggestions, version 4. Installed by revision 0013 beside versions 1 to 3 (kept for old
-- clients; version 3 is version 2's ranking on the graphs of revision 0012). Measured with
-- `metaspace evaluate` on held-out real market data: docs/suggestions.md.
--
-- What changed from v2 and v3, and why:
-- * The centre is the config's own record. v2 shrank each config's local edge toward the mean of the
--   candidates; where the neighbourhood says little, that is a coin flip. v4 shrinks it toward what the
--   config earned, relative to the other candidates run beside it, over the history known at the date
--   (the evidence behind a desk's best-so-far config). Where the environment decides the winner, the local
--   departures from that record are large and consistent, and they come through; where they are noise,
--   the record stands. On the real corpora this turned "no reliable edge" into a lead clear of zero.
-- * Evidence is counted in blocks of one outcome window, not environments: two environments whose outcome
--   windows overlap share most of their market days, so they are one piece of evidence, not two. The
--   window is the runs' own (as_of_date minus their test_start extra field), or `horizon` days if given.
-- * How far local departures are let through is estimated from the data at the date (empirical Bayes):
--   their mean square over the candidates, less the part the noise of the local estimates explains (the
--   spread of the neighbourhood's blocks around each config's local mean). A narrower kernel than v2's (the
--   10th percentile of the neighbour distances, not the median) makes the estimate local; counting its
--   noise in blocks keeps that from costing much where the environment does not matter.
-- * v2 failed with "value out of range: underflow" when over half the neighbours shared the query's env
--   (a bandwidth of 1e-9); kernel weights now stop at exp(-300).

CREATE TYPE historical_db.config_suggestion_v4 AS (
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
    local_weight        double precision
);

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
--   edge_z: the local edge over the candidates' mean in standard errors, signed so that positive is better.
--   deflated_confidence: Phi(score / sqrt(one environment's spread + posterior variance)), the probability
--   that the config's objective in one new environment beats the candidates' mean there. 0.5 is a coin flip.
CREATE FUNCTION historical_db.suggest_configs_v4(
    env vector, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 1000, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false, eligible_configs text[] DEFAULT NULL,
    encoder_version integer DEFAULT NULL, history integer DEFAULT 20000, horizon integer DEFAULT NULL
) RETURNS SETOF historical_db.config_suggestion_v4
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
-- Planned for each call's own arguments: a generic plan of the records' read (after five calls) was 3x slower.
SET plan_cache_mode = 'force_custom_plan'
AS $fn$
DECLARE
    path text[];
    direction double precision := CASE WHEN higher_is_better THEN 1 ELSE -1 END;
    active integer := historical_db.active_encoder_version_v1();
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
        SELECT s.*, d.tau2 / (d.tau2 + s.local_var) AS lambda
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
           historical_db.normal_cdf_v1(c.edge / sqrt(c.es2 + c.posterior_var)),
           c.candidates, c.environments, direction * c.rel, direction * c.prior, c.record_blocks, c.lambda
    FROM ranked c
    ORDER BY c.edge DESC, c.config_id
    LIMIT k;
END
$fn$;

-- Configs that worked in environments like a JSON env (a bare env object, or a run record with one), as of
-- a date: suggest_configs_v4 on the env encoded inside the database, with the version it was encoded with
-- (what `metaspace suggest` answers, for SQL clients; suggest_for_env_v1 stays on version 2).
CREATE FUNCTION historical_db.suggest_for_env_v3(
    env jsonb, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 1000, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false, history integer DEFAULT 20000,
    horizon integer DEFAULT NULL
) RETURNS SETOF historical_db.config_suggestion_v4
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    version integer := historical_db.encoder_version_v1(NULL);
BEGIN
    RETURN QUERY SELECT * FROM historical_db.suggest_configs_v4(
        historical_db.encode_v1('env', env, version), k, historical_db.record_as_of_v1(env, as_of), objective,
        higher_is_better, neighbours, min_runs, strategy_ids, exact, NULL, version, history, horizon);
END
$fn$;
