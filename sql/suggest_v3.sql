-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- metaspace's suggestions, version 3 (revision 0012): suggest_configs_v2 exactly (sql/suggest_v2.sql says
-- what it computes and why), finding the neighbouring runs with nearest_runs_v2 (sql/search_v3.sql), which
-- walks whichever HNSW graph the env space has (halfvec, float32) or scans exactly where it has none.
-- Same arguments, same columns (historical_db.config_suggestion_v2).

-- Configs suggested for a target environment, as of a date (never a run dated after it).
--
--   The `neighbours` nearest runs in env space (active encoder version, as of the date) are grouped into
--   environments. In each environment where two or more configs ran, a config's relative objective is its
--   objective minus the environment's mean; where it ran alone, minus the mean of the neighbourhood (a
--   history of one run per environment still gets suggestions). Per config, over environments:
--   relative_objective: the relative objectives averaged with similarity weights (Gaussian kernel of the
--   env distance, bandwidth the median neighbour distance); n = effective number of environments.
--   score (the ranking): the edge over the mean of the candidates, shrunk by its evidence (empirical Bayes,
--   e * n / (n + s2 / tau2), s2 the spread of one config's relative objective between environments, tau2
--   the spread of true edges between configs): expected objective above a random pick among them.
--   edge_z: the edge in standard errors, sqrt(s2 / n), signed so that positive is better.
--   deflated_confidence: Phi(score / sqrt(s2 + posterior variance)), the probability that the config's
--   objective in one new environment beats the candidates' mean there. 0.5 is a coin flip.
--   Candidates: configs with min_runs or more neighbouring environments (and in eligible_configs, if given).
CREATE FUNCTION historical_db.suggest_configs_v3(
    env vector, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 1000, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false, eligible_configs text[] DEFAULT NULL,
    encoder_version integer DEFAULT NULL
) RETURNS SETOF historical_db.config_suggestion_v2
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
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
               md5(r.env::text) AS env_key, (r.outcome #>> path)::double precision AS value
        FROM near n JOIN historical_db.runs r ON r.run_id = n.run_id
        WHERE jsonb_typeof(r.outcome #> path) = 'number'
    ), bandwidth AS (
        SELECT greatest(percentile_cont(0.5) WITHIN GROUP (ORDER BY s.distance), 1e-9) AS h FROM scored s
    ), cells AS (
        -- One piece of evidence per config and environment, however often it ran there.
        SELECT s.as_of_date, s.env_key, s.config_id, avg(s.value) AS value, min(s.distance) AS distance
        FROM scored s GROUP BY s.as_of_date, s.env_key, s.config_id
    ), relative AS (
        -- Where a config ran alone in its environment, it can only be compared with the neighbourhood's mean.
        SELECT c.config_id,
               c.value - CASE WHEN count(*) OVER e >= 2 THEN avg(c.value) OVER e ELSE avg(c.value) OVER () END AS rel,
               exp(-0.5 * (c.distance / b.h) ^ 2) AS w
        FROM cells c CROSS JOIN bandwidth b
        WINDOW e AS (PARTITION BY c.as_of_date, c.env_key)
    ), evidence AS (
        SELECT r.config_id,
               count(*)::integer AS environments,
               sum(r.w * r.rel) / nullif(sum(r.w), 0) AS relative_objective,
               sum(r.w) ^ 2 / nullif(sum(r.w ^ 2), 0) AS effective_envs
        FROM relative r
        GROUP BY r.config_id
    ), groups AS (
        SELECT s.config_id,
               count(*)::integer AS runs,
               avg(s.distance) AS mean_distance,
               avg(s.value) AS objective_mean,
               stddev_samp(s.value) AS objective_std,
               sum(exp(-0.5 * (s.distance / b.h) ^ 2) * s.value) / nullif(sum(exp(-0.5 * (s.distance / b.h) ^ 2)), 0)
                   AS weighted_objective,
               (array_agg(s.run_id ORDER BY direction * s.value DESC, s.run_id))[1] AS best_run_id,
               (array_agg(s.value ORDER BY direction * s.value DESC, s.run_id))[1] AS best_objective,
               (array_agg(s.config ORDER BY direction * s.value DESC, s.run_id))[1] AS config
        FROM scored s CROSS JOIN bandwidth b
        GROUP BY s.config_id
    ), candidate AS (
        SELECT g.*, e.environments, e.effective_envs, direction * e.relative_objective AS rel
        FROM groups g JOIN evidence e ON e.config_id = g.config_id
        WHERE e.environments >= min_runs AND (eligible_configs IS NULL OR g.config_id = ANY (eligible_configs))
    ), spread AS (
        -- s2: one config's relative objective from environment to environment, pooled over configs;
        -- tau2: the spread of the configs' true edges (between-config variance less its noise part).
        SELECT (SELECT sum((direction * r.rel - c.rel) ^ 2) / nullif(count(*) - count(DISTINCT r.config_id), 0)
                FROM relative r JOIN candidate c ON c.config_id = r.config_id) AS within,
               (SELECT var_samp(c.rel) FROM candidate c) AS between,
               (SELECT avg(c.effective_envs) FROM candidate c) AS typical_envs,
               (SELECT avg(c.rel) FROM candidate c) AS centre,
               (SELECT count(*) FROM candidate c)::integer AS candidates
    ), prior AS (
        SELECT s.centre, s.candidates, greatest(coalesce(s.within, 0), 1e-12) AS within,
               greatest(coalesce(s.between, 0) - coalesce(s.within, 0) / s.typical_envs,
                        1e-3 * greatest(coalesce(s.within, 0), 1e-12)) AS tau2
        FROM spread s
    ), compared AS (
        SELECT c.*, p.candidates, p.within, p.tau2,
               (c.rel - p.centre) * c.effective_envs / (c.effective_envs + p.within / p.tau2) AS edge,
               1 / (c.effective_envs / p.within + 1 / p.tau2) AS posterior_var,
               (c.rel - p.centre) / sqrt(p.within / c.effective_envs) AS z
        FROM candidate c CROSS JOIN prior p
    )
    SELECT c.config_id, c.config, direction * c.edge, c.weighted_objective, c.runs, c.mean_distance,
           c.objective_mean, c.objective_std, c.best_run_id, c.best_objective, c.z,
           historical_db.normal_cdf_v1(c.edge / sqrt(c.within + c.posterior_var)),
           c.candidates, c.environments, direction * c.rel
    FROM compared c
    ORDER BY c.edge DESC, c.config_id
    LIMIT k;
END
$fn$;
