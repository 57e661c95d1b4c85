-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- metaspace's search functions, version 1. Installed by revision 0005; a changed signature becomes a _v2
-- beside these, and a later revision drops the _v1 ones.
--
-- Every function pins search_path (FROM CURRENT: the migration sets it to pg_catalog, the schema of the
-- vector extension, pg_temp), searches only the ACTIVE encoder version (so a rebuild in progress never
-- mixes two versions), and builds no SQL from its arguments: the queries below are constant texts run
-- with EXECUTE ... USING, so that each call is planned with its own values (which is what lets the
-- planner prune the view to one space and use that space's partial HNSW index).

CREATE TYPE historical_db.run_match_v1 AS (
    run_id       text,
    config_id    text,
    strategy_id  text,
    as_of_date   date,
    distance     double precision,
    entity_scope jsonb
);

CREATE TYPE historical_db.config_suggestion_v1 AS (
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
    candidates          integer
);

-- Every stored vector of metaspace, by space. Asking one space (WHERE space = 'env') reads one table
-- and uses that space's HNSW index; also usable from plain SQL. Filter on encoder_version: the rows
-- metaspace writes carry one (META_CONFIG_ENV_V0, joint-meta-config-env-v1); rows of other joint types
-- or from before the conversion have none. (No WHERE inside the view: a filtered UNION ALL branch keeps
-- PostgreSQL from using the HNSW index for ORDER BY.)
CREATE VIEW historical_db.run_vectors_v1 AS
SELECT 'joint'::text AS space,
       j.entity_scope ->> 'run_id' AS run_id,
       j.entity_scope ->> 'config_id' AS config_id,
       j.entity_scope ->> 'strategy_id' AS strategy_id,
       j.as_of_date,
       j.encoder_version,
       j.entity_scope,
       j.vector
FROM historical_db.joint_embeddings j
UNION ALL
SELECT b.branch, b.run_id, b.config_id, b.strategy_id, b.as_of_date, b.encoder_version,
       jsonb_build_object('run_id', b.run_id, 'config_id', b.config_id, 'strategy_id', b.strategy_id,
                          'source', 'meta-config-env'),
       b.vector
FROM historical_db.branch_embeddings b;

COMMENT ON VIEW historical_db.run_vectors_v1 IS
    'metaspace vectors by space (joint, config, env, outcome) and encoder version; filter on space';

-- The active encoder version of the joint model; an error saying what to run when there is none.
CREATE FUNCTION historical_db.active_encoder_version_v1() RETURNS integer
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    active integer;
BEGIN
    SELECT v.version INTO active FROM historical_db.encoder_versions v
    WHERE v.model_id = 'joint-meta-config-env-v1' AND v.is_active;
    IF active IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = 'no encoder version is active: nothing has been embedded yet',
            HINT = 'Run: metaspace embed-runs';
    END IF;
    RETURN active;
END
$fn$;

-- The checks every search function makes of its arguments.
CREATE FUNCTION historical_db.check_search_args_v1(query vector, k integer, space text, k_max integer DEFAULT 1000)
RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    IF k IS NULL OR k < 1 OR k > k_max THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'k must be between 1 and ' || k_max || ', got ' || coalesce(k::text, 'NULL');
    END IF;
    IF space IS NULL OR space NOT IN ('joint', 'config', 'env', 'outcome') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'unknown space ' || coalesce(quote_literal(space), 'NULL')
                      || ': use joint, config, env or outcome';
    END IF;
    IF query IS NOT NULL AND vector_dims(query) <> 384 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'the query vector has ' || vector_dims(query) || ' dimensions; metaspace spaces have 384';
    END IF;
END
$fn$;

-- The k nearest runs of one encoder version: the worker behind search_runs_v1 and neighbours_v1.
--
-- Path rule (measured, see docs/benchmarks.md):
-- 1. as of a date that leaves fewer than T = sqrt(5.3 * k * N) runs of the space's N (counted on a
--    B-tree, stopping at T; T kept within 1,000..50,000), the exact scan answers. The graph walk costs
--    about k / selectivity (16 ms p50, 50-61 ms p95 at 1 percent for k = 10, at 100,000 and at
--    1,000,000 runs) while the exact scan costs about 2-3 microseconds a matching run, so the exact
--    scan wins below that many runs (T = 2,300 at 100,000 runs, 7,300 at 1,000,000);
-- 2. otherwise the HNSW graph is walked with iterative scans (hnsw.iterative_scan = relaxed_order, up
--    to hnsw.max_scan_tuples), the filters applied as it goes;
-- 3. when that walk returns fewer than k rows, the filter was too selective for the graph and the
--    exact scan answers instead, so a filtered query returns k rows whenever k matching rows exist.
CREATE FUNCTION historical_db.nearest_runs_v1(
    query vector, k integer, space text, encoder_version integer, as_of date, strategy_ids text[],
    config_ids text[], scope jsonb, exact boolean
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
SET hnsw.iterative_scan = 'relaxed_order'
AS $fn$
DECLARE
    -- The filters, one constant text for both paths so that they can never disagree on what matches.
    -- (Arguments arrive only as parameters $2..$7; nothing of them is ever part of the SQL text.)
    matching constant text := $w$
        WHERE r.space = $2 AND r.encoder_version = $3
          AND ($4::date IS NULL OR r.as_of_date <= $4)
          AND ($5::text[] IS NULL OR r.strategy_id = ANY ($5))
          AND ($6::text[] IS NULL OR r.config_id = ANY ($6))
          AND ($7::jsonb IS NULL OR r.entity_scope @> $7)
    $w$;
    found historical_db.run_match_v1[];
    total double precision;
    threshold integer;
    known integer;
BEGIN
    IF NOT coalesce(exact, false) AND as_of IS NOT NULL THEN
        SELECT greatest(c.reltuples, 0) INTO total FROM pg_class c
        WHERE c.oid = to_regclass(CASE space WHEN 'joint' THEN 'historical_db.joint_embeddings_vector_hnsw'
                                  ELSE 'historical_db.branch_embeddings_' || space || '_hnsw' END);
        threshold := least(50000, greatest(1000, ceil(sqrt(5.3 * k * coalesce(total, 0)))))::integer;
        EXECUTE $q$
            SELECT count(*) FROM (
                SELECT 1 FROM historical_db.run_vectors_v1 r
                WHERE r.space = $1 AND r.encoder_version = $2 AND r.as_of_date <= $3
                LIMIT $4
            ) s
        $q$ INTO known USING space, encoder_version, as_of, threshold;
        exact := known < threshold;
    END IF;
    IF NOT coalesce(exact, false) THEN
        EXECUTE $q$
            SELECT array_agg(s.m ORDER BY (s.m).distance, (s.m).run_id) FROM (
                SELECT ROW(r.run_id, r.config_id, r.strategy_id, r.as_of_date, r.vector <-> $1,
                           r.entity_scope)::historical_db.run_match_v1 AS m
                FROM historical_db.run_vectors_v1 r $q$ || matching || $q$
                ORDER BY r.vector <-> $1
                LIMIT $8
            ) s
        $q$ INTO found USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, k;
        IF coalesce(cardinality(found), 0) >= k THEN
            RETURN QUERY SELECT * FROM unnest(found);
            RETURN;
        END IF;
    END IF;
    RETURN QUERY EXECUTE $q$
        SELECT r.run_id, r.config_id, r.strategy_id, r.as_of_date, l2_distance(r.vector, $1), r.entity_scope
        FROM historical_db.run_vectors_v1 r $q$ || matching || $q$
        ORDER BY l2_distance(r.vector, $1), r.run_id
        LIMIT $8
    $q$ USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, k;
END
$fn$;

-- 1. The k nearest runs to a vector in a space, as of a date (never a run dated after it), optionally
--    only some strategies, some configs, or runs whose entity_scope contains a JSON object.
CREATE FUNCTION historical_db.search_runs_v1(
    query vector, k integer DEFAULT 10, space text DEFAULT 'joint', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'the query vector is NULL';
    END IF;
    PERFORM historical_db.check_search_args_v1(query, k, space);
    RETURN QUERY SELECT * FROM historical_db.nearest_runs_v1(
        query, k, space, historical_db.active_encoder_version_v1(), as_of, strategy_ids, config_ids, scope, exact);
END
$fn$;

-- 2. The k nearest runs to a stored run (the run itself excluded), in any space.
CREATE FUNCTION historical_db.neighbours_v1(
    of_run text, k integer DEFAULT 10, space text DEFAULT 'joint', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    active integer := historical_db.active_encoder_version_v1();
    query vector;
BEGIN
    PERFORM historical_db.check_search_args_v1(NULL, k, space);
    IF space = 'joint' THEN
        SELECT j.vector INTO query FROM historical_db.joint_embeddings j
        WHERE j.joint_type = 'META_CONFIG_ENV_V0' AND j.model_id = 'joint-meta-config-env-v1'
          AND (j.entity_scope ->> 'run_id') = of_run AND j.encoder_version = active;
    ELSE
        SELECT b.vector INTO query FROM historical_db.branch_embeddings b
        WHERE b.run_id = of_run AND b.branch = space AND b.encoder_version = active;
    END IF;
    IF query IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found',
            MESSAGE = 'run ' || coalesce(quote_literal(of_run), 'NULL') || ' has no ' || space
                      || ' vector for encoder version ' || active,
            HINT = 'Import it (metaspace import-runs) and embed it (metaspace embed-runs), or check the run_id.';
    END IF;
    RETURN QUERY SELECT m.* FROM historical_db.nearest_runs_v1(
        query, k + 1, space, active, as_of, strategy_ids, config_ids, scope, exact) m
    WHERE m.run_id <> of_run
    ORDER BY m.distance, m.run_id
    LIMIT k;
END
$fn$;

-- The standard normal distribution function (Abramowitz and Stegun 7.1.26, absolute error below 1.5e-7).
CREATE FUNCTION historical_db.normal_cdf_v1(x double precision) RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
SELECT CASE
    WHEN x < -38 THEN 0.0
    WHEN x > 38 THEN 1.0
    ELSE 0.5 * (1 + sign(x) * (1 - (
        ((((1.061405429 * c.t - 1.453152027) * c.t + 1.421413741) * c.t - 0.284496736) * c.t + 0.254829592) * c.t
    ) * exp(-(x * x) / 2)))
END
FROM (SELECT 1 / (1 + 0.3275911 * abs(x) / sqrt(2.0)) AS t) AS c
$fn$;

-- Its inverse (Acklam's rational approximation, relative error below 1.2e-9), for 0 < p < 1.
CREATE FUNCTION historical_db.normal_quantile_v1(p double precision) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    q double precision;
    r double precision;
BEGIN
    IF p <= 0 OR p >= 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'normal_quantile_v1 needs 0 < p < 1, got ' || p;
    END IF;
    IF p < 0.02425 OR p > 1 - 0.02425 THEN
        q := sqrt(-2 * ln(least(p, 1 - p)));
        r := (((((-7.784894002430293e-03 * q - 3.223964580411365e-01) * q - 2.400758277161838e+00) * q
                - 2.549732539343734e+00) * q + 4.374664141464968e+00) * q + 2.938163982698783e+00)
             / ((((7.784695709041462e-03 * q + 3.224671290700398e-01) * q + 2.445134137142996e+00) * q
                 + 3.754408661907416e+00) * q + 1);
        RETURN CASE WHEN p < 0.5 THEN r ELSE -r END;
    END IF;
    q := p - 0.5;
    r := q * q;
    RETURN (((((-3.969683028665376e+01 * r + 2.209460984245205e+02) * r - 2.759285104469687e+02) * r
              + 1.383577518672690e+02) * r - 3.066479806614716e+01) * r + 2.506628277459239e+00) * q
           / (((((-5.447609879822406e+01 * r + 1.615858368580409e+02) * r - 1.556989798598866e+02) * r
               + 6.680131188771972e+01) * r - 1.328068155288572e+01) * r + 1);
END
$fn$;

-- The expected maximum of n independent standard normal draws (Bailey and Lopez de Prado's
-- approximation, the benchmark of the deflated Sharpe ratio): what the best of n luck-only candidates
-- scores on average.
CREATE FUNCTION historical_db.expected_max_normal_v1(n integer) RETURNS double precision
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
SELECT CASE WHEN n <= 1 THEN 0.0 ELSE
    (1 - 0.5772156649015329) * historical_db.normal_quantile_v1(1 - 1.0 / n)
    + 0.5772156649015329 * historical_db.normal_quantile_v1(1 - 1.0 / (n * exp(1.0)))
END
$fn$;

-- 3. Configs suggested for a target environment, as of a date: the `neighbours` nearest runs in env
--    space, grouped by config, keeping configs with at least `min_runs` runs that report the objective.
--
--    weighted_objective: the config's objective averaged with similarity weights (a Gaussian kernel of
--    the env distance, bandwidth the median neighbour distance).
--    score (the ranking): weighted_objective shrunk toward the neighbourhood's mean by its evidence,
--    m + (x - m) * n / (n + s2 / tau2) with n the config's effective number of runs, s2 the spread of
--    runs within a config and tau2 the spread between configs (empirical Bayes): a config seen 3 times
--    with a lucky mean does not outrank one seen 30 times.
--    edge_z: weighted_objective minus the neighbourhood's mean in standard errors (sqrt(s2 / n)),
--    signed so that positive is better. deflated_confidence = Phi(edge_z - E[max of N standard
--    normals]), N = candidates compared: the deflated-Sharpe idea applied to the comparison just made.
--    Near 0.5 or below, the lead is what the luckiest of N equal configs would show; near 1, it is
--    unlikely to be luck.
CREATE FUNCTION historical_db.suggest_configs_v1(
    env vector, k integer DEFAULT 5, as_of date DEFAULT NULL, objective text DEFAULT 'sharpe',
    higher_is_better boolean DEFAULT true, neighbours integer DEFAULT 200, min_runs integer DEFAULT 3,
    strategy_ids text[] DEFAULT NULL, exact boolean DEFAULT false
) RETURNS SETOF historical_db.config_suggestion_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    path text[];
    direction double precision := CASE WHEN higher_is_better THEN 1 ELSE -1 END;
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
    path := string_to_array(regexp_replace(coalesce(objective, ''), '^outcome[.]', ''), '.');
    IF coalesce(cardinality(path), 0) = 0 OR '' = ANY (path) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'objective ' || coalesce(quote_literal(objective), 'NULL')
                      || ' is not an outcome key (for example sharpe, or outcome.risk.sortino)';
    END IF;
    RETURN QUERY
    WITH near AS (
        SELECT m.run_id, m.config_id, m.distance
        FROM historical_db.nearest_runs_v1(env, neighbours, 'env', historical_db.active_encoder_version_v1(),
                                           as_of, strategy_ids, NULL, NULL, exact) m
    ), scored AS (
        SELECT n.run_id, coalesce(n.config_id, n.run_id) AS config_id, n.distance, r.config,
               (r.outcome #>> path)::double precision AS value
        FROM near n JOIN historical_db.runs r ON r.run_id = n.run_id
        WHERE jsonb_typeof(r.outcome #> path) = 'number'
    ), bandwidth AS (
        SELECT greatest(percentile_cont(0.5) WITHIN GROUP (ORDER BY s.distance), 1e-9) AS h FROM scored s
    ), weighted AS (
        SELECT s.*, exp(-0.5 * (s.distance / b.h) ^ 2) AS w FROM scored s CROSS JOIN bandwidth b
    ), groups AS (
        SELECT w.config_id,
               count(*)::integer AS runs,
               avg(w.distance) AS mean_distance,
               avg(w.value) AS objective_mean,
               stddev_samp(w.value) AS objective_std,
               sum(w.w * w.value) / nullif(sum(w.w), 0) AS weighted_objective,
               sum(w.w) ^ 2 / nullif(sum(w.w ^ 2), 0) AS effective_runs,
               (array_agg(w.run_id ORDER BY direction * w.value DESC, w.run_id))[1] AS best_run_id,
               (array_agg(w.value ORDER BY direction * w.value DESC, w.run_id))[1] AS best_objective,
               (array_agg(w.config ORDER BY direction * w.value DESC, w.run_id))[1] AS config
        FROM weighted w
        GROUP BY w.config_id
    ), prior AS (
        SELECT (SELECT sum(w.w * w.value) / nullif(sum(w.w), 0) FROM weighted w) AS mean,
               (SELECT sum((w.value - g.objective_mean) ^ 2) / nullif(count(*) - count(DISTINCT g.config_id), 0)
                FROM weighted w JOIN groups g ON g.config_id = w.config_id) AS within,
               (SELECT var_samp(g.weighted_objective) FROM groups g) AS between,
               (SELECT avg(g.effective_runs) FROM groups g) AS typical_runs,
               (SELECT var_samp(w.value) FROM weighted w) AS total
    ), shrink AS (
        SELECT p.mean, coalesce(p.within, p.total) AS within,
               coalesce(coalesce(p.within, p.total)
                        / greatest(p.between - coalesce(p.within, p.total) / p.typical_runs, 1e-3 * p.total), 0)
                   AS prior_runs
        FROM prior p
    ), compared AS (
        SELECT g.*, count(*) OVER ()::integer AS candidates,
               s.mean + (g.weighted_objective - s.mean) * g.effective_runs / (g.effective_runs + s.prior_runs)
                   AS score,
               direction * (g.weighted_objective - s.mean) / nullif(sqrt(s.within / g.effective_runs), 0) AS edge_z
        FROM groups g CROSS JOIN shrink s
        WHERE g.runs >= min_runs
    )
    SELECT c.config_id, c.config, c.score, c.weighted_objective, c.runs, c.mean_distance, c.objective_mean,
           c.objective_std, c.best_run_id, c.best_objective, c.edge_z,
           historical_db.normal_cdf_v1(c.edge_z - historical_db.expected_max_normal_v1(c.candidates)),
           c.candidates
    FROM compared c
    ORDER BY direction * c.score DESC, c.config_id
    LIMIT k;
END
$fn$;
