-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- The as-of tail (issue 14, revision 0014): nearest_runs_v2 -- the worker behind search_runs_v3,
-- neighbours_v3 and suggest_configs_v4 -- replaced in place with the same arguments and the same answer
-- contract, so every caller gains it without a new version of the 200-line suggest function. Released
-- sql/search_v3.sql is unchanged; revision 0014 installs this body over it and its downgrade restores
-- search_v3.sql's body (its frozen copy of 0012).
--
-- What is new: as-of prefix graphs. Where embed-runs has built them (metaspace/store/graphs.py), a space's
-- graph has partial copies over the runs known as of a few dates, named asof_<space>_<kind>_<level>
-- (level 1 leaves about half of the space's runs, each next level a third of the one before, down to about
-- asof_exact_runs runs). The planner walks the smallest copy whose date covers the query's as-of date, in
-- which at least about a third of the runs match, so the walk finds its k quickly however early the date.
-- The exact path is then needed only below that smallest copy, where it reads few rows wherever they lie.
--
-- The path rule:
-- 0. the space's graph is its halfvec graph if it has one, else its float32 graph; a space with neither
--    is answered by the exact scan;
-- 1. as of a date, the runs known as of it are counted on a B-tree, stopping at T; fewer than T, the exact
--    scan answers. T = sqrt(5.3 * k * N) (kept within 1,000..50,000) as in search_v3.sql; where the space
--    has prefix graphs of its graph's kind, T is at most asof_exact_runs * k / 10 (historical_db.settings,
--    default 2,000: the smallest prefix graph holds between it and three times it);
-- 2. otherwise the graph is walked with iterative scans (hnsw.iterative_scan = relaxed_order), the as-of
--    date a constant of a one-shot plan so that the planner can pick a prefix graph; on a halfvec graph the
--    query is cast to halfvec(384), and the k runs found are ordered by their exact float32 distance;
-- 3. when the walk returns fewer than k rows, the exact scan answers instead.
-- exact => true is always the exact float32 scan. Measured: docs/benchmarks.md, "The as-of tail, built".
CREATE OR REPLACE FUNCTION historical_db.nearest_runs_v2(
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
    prefixed boolean := to_regclass('historical_db.asof_' || space
        || CASE WHEN half_graph IS NULL THEN '_vector_1' ELSE '_halfvec_1' END) IS NOT NULL;
    found historical_db.run_match_v1[];
    total double precision;
    threshold integer;
    exact_runs integer;
    known integer;
BEGIN
    exact := coalesce(exact, false) OR graph IS NULL;
    IF NOT exact AND as_of IS NOT NULL THEN
        SELECT greatest(c.reltuples, 0) INTO total FROM pg_class c WHERE c.oid = graph;
        threshold := least(50000, greatest(1000, ceil(sqrt(5.3 * k * coalesce(total, 0)))))::integer;
        IF prefixed THEN
            SELECT (s.value #>> '{}')::integer INTO exact_runs FROM historical_db.settings s
            WHERE s.name = 'asof_exact_runs';
            threshold := least(threshold, greatest(1, ceil(coalesce(exact_runs, 2000) * k / 10.0)))::integer;
        END IF;
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
