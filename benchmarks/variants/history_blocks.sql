-- draft: see docs/suggestions.md
CREATE TYPE historical_db.config_suggestion_v2 AS (
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
    relative_objective  double precision
);

CREATE FUNCTION historical_db.suggest_configs_v2(
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
        FROM historical_db.nearest_runs_v1(env, neighbours, 'env', active, as_of, strategy_ids, NULL, NULL, exact) m
    ), scored AS (
        SELECT n.run_id, coalesce(n.config_id, n.run_id) AS config_id, n.distance, r.config, r.as_of_date,
               md5(r.env::text) AS env_key, (r.outcome #>> path)::double precision AS value,
               CASE WHEN jsonb_typeof(r.extra -> 'test_start') = 'string'
                         AND pg_input_is_valid(r.extra ->> 'test_start', 'date')
                    THEN r.as_of_date - (r.extra ->> 'test_start')::date END AS window_days
        FROM near n JOIN historical_db.runs r ON r.run_id = n.run_id
        WHERE jsonb_typeof(r.outcome #> path) = 'number'
    ), bandwidth AS (
        SELECT greatest(percentile_cont(0.5) WITHIN GROUP (ORDER BY s.distance), 1e-9) AS h,
               -- One block of evidence: one outcome window (environments closer than that share outcome days).
               greatest(1, coalesce(percentile_disc(0.5) WITHIN GROUP (ORDER BY s.window_days) FILTER (WHERE s.window_days > 0), 1)) AS block_days
        FROM scored s
    ), cells AS (
        SELECT s.as_of_date, s.env_key, s.config_id, avg(s.value) AS value, min(s.distance) AS distance
        FROM scored s GROUP BY s.as_of_date, s.env_key, s.config_id
    ), relative AS (
        SELECT c.config_id, floor((c.as_of_date - date '2000-01-03')::double precision / b.block_days) AS block,
               c.value - CASE WHEN count(*) OVER e >= 2 THEN avg(c.value) OVER e ELSE avg(c.value) OVER () END AS rel,
               exp(-0.5 * (c.distance / b.h) ^ 2) AS w
        FROM cells c CROSS JOIN bandwidth b
        WINDOW e AS (PARTITION BY c.as_of_date, c.env_key)
    ), history_cells AS (
        SELECT r.as_of_date, md5(r.env::text) AS env_key, coalesce(r.config_id, r.run_id) AS config_id,
               avg((r.outcome #>> path)::double precision) AS value
        FROM historical_db.runs r
        WHERE (as_of IS NULL OR r.as_of_date <= as_of) AND jsonb_typeof(r.outcome #> path) = 'number'
          AND (strategy_ids IS NULL OR r.strategy_id = ANY (strategy_ids))
          AND coalesce(r.config_id, r.run_id) IN (SELECT DISTINCT s.config_id FROM scored s)
        GROUP BY 1, 2, 3
    ), history_rel AS (
        SELECT h.config_id, floor((h.as_of_date - date '2000-01-03')::double precision / b.block_days) AS block,
               h.value - avg(h.value) OVER e AS rel, count(*) OVER e AS tried
        FROM history_cells h CROSS JOIN bandwidth b
        WINDOW e AS (PARTITION BY h.as_of_date, h.env_key)
    ), history_blocks AS (
        SELECT h.config_id, h.block, avg(h.rel) AS rel FROM history_rel h WHERE h.tried >= 2 GROUP BY 1, 2
    ), history AS (
        -- Each config's record over every environment known at the date: its mean relative objective per block.
        SELECT h.config_id, avg(h.rel) AS prior, count(*) AS blocks FROM history_blocks h GROUP BY 1
    ), history_noise AS (
        SELECT sum((hb.rel - h.prior) ^ 2) / nullif(count(*) - count(DISTINCT hb.config_id), 0) AS s2
        FROM history_blocks hb JOIN history h ON h.config_id = hb.config_id
    ), local_blocks AS (
        -- The local departure from the config's record, per block of the neighbourhood.
        SELECT r.config_id, r.block, sum(r.w * r.rel) / nullif(sum(r.w), 0) AS rel, sum(r.w) AS w, count(*) AS envs
        FROM relative r GROUP BY 1, 2
    ), evidence AS (
        SELECT l.config_id, sum(l.envs)::integer AS environments,
               sum(l.w * l.rel) / nullif(sum(l.w), 0) AS relative_objective,
               sum(l.w) ^ 2 / nullif(sum(l.w ^ 2), 0) AS effective_blocks
        FROM local_blocks l GROUP BY 1
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
        SELECT g.*, e.environments, e.effective_blocks, direction * e.relative_objective AS rel,
               direction * h.prior AS prior, coalesce(h.blocks, 0) AS history_blocks
        FROM groups g JOIN evidence e ON e.config_id = g.config_id LEFT JOIN history h ON h.config_id = g.config_id
        WHERE e.environments >= min_runs AND (eligible_configs IS NULL OR g.config_id = ANY (eligible_configs))
    ), spread AS (
        SELECT (SELECT sum((direction * l.rel - c.rel) ^ 2) / nullif(count(*) - count(DISTINCT l.config_id), 0)
                FROM local_blocks l JOIN candidate c ON c.config_id = l.config_id) AS local_s2,
               (SELECT sum((direction * r.rel - c.rel) ^ 2) / nullif(count(*) - count(DISTINCT r.config_id), 0)
                FROM relative r JOIN candidate c ON c.config_id = r.config_id) AS one_env_s2,
               (SELECT n.s2 FROM history_noise n) AS history_s2,
               (SELECT avg(c.prior) FROM candidate c) AS prior_centre,
               (SELECT avg(c.rel) FROM candidate c) AS centre,
               (SELECT count(*) FROM candidate c)::integer AS candidates
    ), prior_fit AS (
        -- The history-wide records, shrunk toward the candidates' mean by their own evidence.
        SELECT s.*, greatest(coalesce(s.local_s2, 0), 1e-12) AS ls2, greatest(coalesce(s.one_env_s2, 0), 1e-12) AS es2,
               greatest(coalesce(s.history_s2, s.local_s2, 0), 1e-12) AS hs2,
               greatest((SELECT var_samp(c.prior) - avg(coalesce(s.history_s2, 0) / greatest(c.history_blocks, 1))
                         FROM candidate c WHERE c.prior IS NOT NULL), 1e-6 * greatest(coalesce(s.history_s2, 0), 1e-12)) AS prior_tau2
        FROM spread s
    ), shrunk AS (
        SELECT c.*, p.candidates, p.ls2, p.es2,
               CASE WHEN c.prior IS NULL THEN p.centre
                    ELSE p.prior_centre + (c.prior - p.prior_centre) * p.prior_tau2 / (p.prior_tau2 + p.hs2 / c.history_blocks) END AS base,
               CASE WHEN c.prior IS NULL THEN p.prior_tau2
                    ELSE 1 / (1 / p.prior_tau2 + c.history_blocks / p.hs2) END AS base_var
        FROM candidate c CROSS JOIN prior_fit p
    ), departure AS (
        -- tau2 of the local departures: their mean square over the candidates less its noise part.
        SELECT greatest(avg((s.rel - s.base) ^ 2) - avg(s.ls2 / s.effective_blocks), 1e-6 * avg(s.ls2)) AS tau2
        FROM shrunk s
    ), posterior AS (
        SELECT s.*, s.base + (s.rel - s.base) * d.tau2 / (d.tau2 + s.ls2 / s.effective_blocks) AS expected,
               s.base_var * (s.ls2 / s.effective_blocks) / (d.tau2 + s.ls2 / s.effective_blocks)
                 + d.tau2 * (s.ls2 / s.effective_blocks) / (d.tau2 + s.ls2 / s.effective_blocks) AS posterior_var
        FROM shrunk s CROSS JOIN departure d
    ), compared AS (
        SELECT p.*, p.expected - avg(p.expected) OVER () AS edge,
               (p.rel - avg(p.rel) OVER ()) / sqrt(p.ls2 / p.effective_blocks) AS z
        FROM posterior p
    )
    SELECT c.config_id, c.config, direction * c.edge, c.weighted_objective, c.runs, c.mean_distance,
           c.objective_mean, c.objective_std, c.best_run_id, c.best_objective, c.z,
           historical_db.normal_cdf_v1(c.edge / sqrt(c.es2 + c.posterior_var)),
           c.candidates, c.environments, direction * c.rel
    FROM compared c
    ORDER BY c.edge DESC, c.config_id
    LIMIT k;
END
$fn$;
