-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- metaspace's search functions, version 3 (revision 0012): version 2's searches, walking whichever HNSW
-- graph a space has. A space may have a halfvec graph (vector_indexes_v2.sql), a float32 one
-- (vector_indexes_v1.sql), or none: metaspace builds graphs only for the indexed spaces that hold enough
-- vectors (metaspace/store/graphs.py, README "Which spaces have a graph"). Same arguments, same columns,
-- and distances are always the float32 distances of the stored vectors.

-- The k nearest runs of one encoder version: the worker behind search_runs_v3, neighbours_v3 and
-- suggest_configs_v3. The path rule of nearest_runs_v1, with the graph found first:
-- 0. the space's graph is its halfvec graph if it has one, else its float32 graph; a space with neither
--    is answered by the exact scan (no walk is attempted: there is nothing to walk);
-- 1. as of a date that leaves fewer than T = sqrt(5.3 * k * N) runs of the graph's N (counted on a B-tree,
--    stopping at T; T kept within 1,000..50,000), the exact scan answers (measured: docs/benchmarks.md);
-- 2. otherwise the graph is walked with iterative scans (hnsw.iterative_scan = relaxed_order), the filters
--    applied as it goes; on a halfvec graph the query is cast to halfvec(384) to match it, and the k runs
--    found are ordered by their exact float32 distance;
-- 3. when the walk returns fewer than k rows, the exact scan answers instead.
CREATE FUNCTION historical_db.nearest_runs_v2(
    query vector, k integer, space text, encoder_version integer, as_of date, strategy_ids text[],
    config_ids text[], scope jsonb, exact boolean
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
SET hnsw.iterative_scan = 'relaxed_order'
AS $fn$
DECLARE
    -- The filters, one constant text for every path so that they can never disagree on what matches.
    -- (Arguments arrive only as parameters $2..$7; nothing of them is ever part of the SQL text.)
    matching constant text := $w$
        WHERE r.space = $2 AND r.encoder_version = $3
          AND ($4::date IS NULL OR r.as_of_date <= $4)
          AND ($5::text[] IS NULL OR r.strategy_id = ANY ($5))
          AND ($6::text[] IS NULL OR r.config_id = ANY ($6))
          AND ($7::jsonb IS NULL OR r.entity_scope @> $7)
    $w$;
    stem constant text := CASE space WHEN 'joint' THEN 'historical_db.joint_embeddings'
                                     ELSE 'historical_db.branch_embeddings_' || space END;
    half_graph regclass := to_regclass(stem || '_halfvec_hnsw');
    graph regclass := coalesce(half_graph, to_regclass(CASE space WHEN 'joint'
        THEN 'historical_db.joint_embeddings_vector_hnsw' ELSE stem || '_hnsw' END));
    found historical_db.run_match_v1[];
    total double precision;
    threshold integer;
    known integer;
BEGIN
    exact := coalesce(exact, false) OR graph IS NULL;
    IF NOT exact AND as_of IS NOT NULL THEN
        SELECT greatest(c.reltuples, 0) INTO total FROM pg_class c WHERE c.oid = graph;
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
    IF NOT exact AND half_graph IS NOT NULL THEN
        EXECUTE $q$
            SELECT array_agg(s.m ORDER BY (s.m).distance, (s.m).run_id) FROM (
                SELECT ROW(r.run_id, r.config_id, r.strategy_id, r.as_of_date, r.vector <-> $1,
                           r.entity_scope)::historical_db.run_match_v1 AS m
                FROM historical_db.run_vectors_v1 r $q$ || matching || $q$
                ORDER BY r.vector::halfvec(384) <-> $1::halfvec(384)
                LIMIT $8
            ) s
        $q$ INTO found USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, k;
    ELSIF NOT exact THEN
        EXECUTE $q$
            SELECT array_agg(s.m ORDER BY (s.m).distance, (s.m).run_id) FROM (
                SELECT ROW(r.run_id, r.config_id, r.strategy_id, r.as_of_date, r.vector <-> $1,
                           r.entity_scope)::historical_db.run_match_v1 AS m
                FROM historical_db.run_vectors_v1 r $q$ || matching || $q$
                ORDER BY r.vector <-> $1
                LIMIT $8
            ) s
        $q$ INTO found USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, k;
    END IF;
    IF NOT exact AND coalesce(cardinality(found), 0) >= k THEN
        RETURN QUERY SELECT * FROM unnest(found);
        RETURN;
    END IF;
    RETURN QUERY EXECUTE $q$
        SELECT r.run_id, r.config_id, r.strategy_id, r.as_of_date, l2_distance(r.vector, $1), r.entity_scope
        FROM historical_db.run_vectors_v1 r $q$ || matching || $q$
        ORDER BY l2_distance(r.vector, $1), r.run_id
        LIMIT $8
    $q$ USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, k;
END
$fn$;

-- 1. The k nearest runs to a vector in a space, as of a date (never a run dated after it); encoder_version
--    as in search_runs_v2.
CREATE FUNCTION historical_db.search_runs_v3(
    query vector, k integer DEFAULT 10, space text DEFAULT 'joint', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false, encoder_version integer DEFAULT NULL
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'the query vector is NULL';
    END IF;
    PERFORM historical_db.check_search_args_v1(query, k, space);
    RETURN QUERY SELECT * FROM historical_db.nearest_runs_v2(
        query, k, space, historical_db.query_version_v2(encoder_version), as_of, strategy_ids, config_ids,
        scope, exact);
END
$fn$;

-- 2. The k nearest runs to a stored run (the run itself excluded), in any space.
CREATE FUNCTION historical_db.neighbours_v3(
    of_run text, k integer DEFAULT 10, space text DEFAULT 'joint', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false, encoder_version integer DEFAULT NULL
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    active integer := historical_db.query_version_v2(encoder_version);
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
    RETURN QUERY SELECT m.* FROM historical_db.nearest_runs_v2(
        query, k + 1, space, active, as_of, strategy_ids, config_ids, scope, exact) m
    WHERE m.run_id <> of_run
    ORDER BY m.distance, m.run_id
    LIMIT k;
END
$fn$;
