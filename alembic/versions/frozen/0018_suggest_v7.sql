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
-- Every part is shared with version 6 (sql/suggest_v6.sql, whose suggest_evidence_v1 holds the search-history
-- mode above, switched on here): the checks, the evidence, the ranking at a local scale, the calibration read,
-- what an empty answer says. suggest_answer_v1 is the last step, shared from this version on.

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
-- arguments and columns, over suggest_evidence_v1 with search histories answered as such.
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
    FROM historical_db.suggest_evidence_v1(env, as_of, path, direction, neighbours, min_runs, strategy_ids, exact,
                                           eligible_configs, active, history, horizon, true) e;
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
        SELECT e FROM historical_db.suggest_evidence_v1(
            env, as_of,
            historical_db.suggest_args_v1(env, 1, objective, higher_is_better, neighbours, min_runs, eligible_configs,
                                          history, horizon, NULL),
            CASE WHEN higher_is_better THEN 1 ELSE -1 END, neighbours, min_runs, NULL, exact, eligible_configs,
            historical_db.active_encoder_version_v1(), history, horizon, true) e), local_scales) r
    WHERE r.rank = 1
$fn$;
