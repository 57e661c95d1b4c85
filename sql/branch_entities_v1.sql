-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- Entities, not copies (issue 25, revision 0019). A sweep tries many configs in one environment and a config
-- runs in many environments, so most branch vectors were copies: 200,000 runs held 5,000 distinct env vectors
-- and 40 distinct config vectors. An HNSW graph over copies links them mostly to each other (pgvector folds at
-- most 10 heap tids into one element), and a walk missed whole environments. Now each distinct branch record
-- is stored once, in historical_db.branch_entities (keyed by encoder version, branch and entity_key_v1 of the
-- record), with the earliest as_of_date of its runs (first_seen); historical_db.run_entities gives each run
-- and encoder version its three entities. The graphs are built over the distinct vectors
-- (sql/vector_indexes_v3.sql and v4), and a search walks them, then expands the entities found to their runs
-- with every filter applied (as-of, strategy, config, scope), so point in time and the filters hold as before.
--
-- This file holds the rules every writer and reader shares (the key of a branch record is entity_key_v1.sql's):
-- * attach_entities_v1 (over entity_keys_v1): what a writer of branch vectors does (the bulk COPY path of
--   metaspace/store/vectors.py, store_run_v3 and embed_pending_v2 alike): one call with its runs' three vectors
--   stores each new entity once and references it;
-- * forget_vectors_v1: a changed record's vectors go, and the entities no run references any more with them;
--   drop_orphans_v1: the entities no run references (embed-runs sweeps them all after its writes);
-- * nearest_entity_runs_v1: the branch spaces' search; nearest_runs_v2 (the worker of every search and
--   suggestion) is replaced in place and hands the branch spaces to it; run_vectors_v1 is replaced in place;
-- * search_distinct_v1: the nearest distinct entities (environments, configs), each with its runs' count and
--   dates: "which environments are like this one";
-- * store_run_v3 and embed_pending_v2, replaced in place (same arguments, same results): they write entities.
--
-- An entity's vector is the one its first writer computed. A vector encoded by the Python encoders and one
-- encoded by the SQL encoders (sql/encode_v1.sql) agree within 1e-6 (docs/encoders.md): that is now also the
-- bound between two runs of one environment written by different writers.

-- A writer's runs (run_ids, with the branch vectors encoded from the records runs holds now: the caller has
-- checked that, and holds the runs FOR SHARE) as rows of (run, its date, strategy and config, branch, the
-- branch record's key, the vector): what attach_entities_v1 reads.
CREATE FUNCTION historical_db.entity_keys_v1(run_ids text[], configs vector[], envs vector[], outcomes vector[])
RETURNS TABLE (run_id text, as_of_date date, strategy_id text, config_id text, branch text, record_key bytea,
               vector vector)
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT s.run_id, r.as_of_date, r.strategy_id, r.config_id, b.branch, historical_db.entity_key_v1(b.record),
           b.vector
    FROM unnest(run_ids, configs, envs, outcomes) AS s (run_id, config, env, outcome)
    JOIN historical_db.runs r ON r.run_id = s.run_id
    CROSS JOIN LATERAL (VALUES ('config', r.config, s.config), ('env', r.env, s.env),
                               ('outcome', r.outcome, s.outcome)) AS b (branch, record, vector)
$fn$;

-- Store the runs' branch vectors for encoder version target: each distinct branch record once (its first
-- writer's vector; ON CONFLICT DO NOTHING, so concurrent writers of one new entity meet there, neither
-- duplicating nor failing), its first_seen moved back where a run dated earlier now has it, and each run's
-- references (a run already referenced for the version is left alone). Each step is its own statement, so
-- that it sees the entities another writer committed meanwhile. Returns the runs referenced. An entity removed
-- as an orphan by another session between its lookup and its reference (a foreign-key violation, or a run
-- left without its reference) is written again: the whole step is retried, up to three times.
CREATE FUNCTION historical_db.attach_entities_v1(
    target integer, run_ids text[], configs vector[], envs vector[], outcomes vector[]
) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    attached integer;
BEGIN
    FOR attempt IN 1..3 LOOP
        BEGIN
            -- (in key order, as every writer inserts: two writers never wait on each other in a cycle)
            INSERT INTO historical_db.branch_entities (encoder_version, first_seen, branch, record_key, vector)
            SELECT DISTINCT ON (k.branch, k.record_key) target, min(k.as_of_date) OVER w, k.branch, k.record_key,
                   k.vector
            FROM historical_db.entity_keys_v1(run_ids, configs, envs, outcomes) k
            WINDOW w AS (PARTITION BY k.branch, k.record_key)
            ORDER BY k.branch, k.record_key, k.as_of_date, k.run_id
            ON CONFLICT (encoder_version, branch, record_key) DO NOTHING;
            UPDATE historical_db.branch_entities e SET first_seen = n.first_seen
            FROM (SELECT k.branch, k.record_key, min(k.as_of_date) AS first_seen
                  FROM historical_db.entity_keys_v1(run_ids, configs, envs, outcomes) k
                  GROUP BY k.branch, k.record_key) n
            WHERE e.encoder_version = target AND e.branch = n.branch AND e.record_key = n.record_key
              AND n.first_seen < e.first_seen;
            INSERT INTO historical_db.run_entities
                (run_id, encoder_version, as_of_date, strategy_id, config_id, config_entity, env_entity,
                 outcome_entity)
            SELECT k.run_id, target, min(k.as_of_date), min(k.strategy_id), min(k.config_id),
                   min(e.entity_id) FILTER (WHERE k.branch = 'config'),
                   min(e.entity_id) FILTER (WHERE k.branch = 'env'),
                   min(e.entity_id) FILTER (WHERE k.branch = 'outcome')
            FROM historical_db.entity_keys_v1(run_ids, configs, envs, outcomes) k
            JOIN historical_db.branch_entities e
              ON e.encoder_version = target AND e.branch = k.branch AND e.record_key = k.record_key
            GROUP BY k.run_id
            HAVING count(*) = 3
            ORDER BY k.run_id
            ON CONFLICT (run_id, encoder_version) DO NOTHING;
            GET DIAGNOSTICS attached = ROW_COUNT;
            -- an entity found by the first step and removed as an orphan by another session before this one
            -- (drop_orphans_v1, forget_vectors_v1) leaves its runs unreferenced: never a run without one of
            -- its three vectors, the whole step again
            IF EXISTS (SELECT 1 FROM unnest(run_ids) AS u (run_id)
                       WHERE NOT EXISTS (SELECT 1 FROM historical_db.run_entities r
                                         WHERE r.run_id = u.run_id AND r.encoder_version = target)) THEN
                RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation',
                    MESSAGE = 'a branch entity was removed as an orphan while runs were attached to it';
            END IF;
            RETURN attached;
        EXCEPTION WHEN foreign_key_violation THEN
            IF attempt = 3 THEN
                RAISE;
            END IF;
        END;
    END LOOP;
END
$fn$;

-- The entities among ids (all, where ids is NULL) that no run references any more: removed; returns how many.
-- An entity a writer is referencing at that moment is left (SKIP LOCKED: the writer's reference holds a key
-- lock on it); one a writer referenced and committed after this statement's snapshot makes the delete fail its
-- foreign key, and the delete is tried again with a new snapshot, up to three times (then left to the next
-- sweep: an orphan left over costs a row, a referenced entity removed would cost a run its vector).
CREATE FUNCTION historical_db.drop_orphans_v1(ids bigint[] DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    dropped integer := 0;
BEGIN
    IF ids IS NOT NULL AND cardinality(ids) = 0 THEN
        RETURN 0;
    END IF;
    FOR attempt IN 1..3 LOOP
        BEGIN
            DELETE FROM historical_db.branch_entities e
            WHERE e.entity_id IN (
                SELECT c.entity_id FROM historical_db.branch_entities c
                WHERE (ids IS NULL OR c.entity_id = ANY (ids))
                  AND NOT (c.branch = 'config' AND EXISTS (
                           SELECT 1 FROM historical_db.run_entities r WHERE r.config_entity = c.entity_id))
                  AND NOT (c.branch = 'env' AND EXISTS (
                           SELECT 1 FROM historical_db.run_entities r WHERE r.env_entity = c.entity_id))
                  AND NOT (c.branch = 'outcome' AND EXISTS (
                           SELECT 1 FROM historical_db.run_entities r WHERE r.outcome_entity = c.entity_id))
                FOR UPDATE SKIP LOCKED);
            GET DIAGNOSTICS dropped = ROW_COUNT;
            RETURN dropped;
        EXCEPTION WHEN foreign_key_violation THEN
            dropped := 0;
        END;
    END LOOP;
    RETURN dropped;
END
$fn$;

-- A changed (or removed) record's vectors: its joint vectors, its references, its quarantine entries, and the
-- entities that only it referenced. The writer that orphans an entity removes it (import-runs, store_run).
CREATE FUNCTION historical_db.forget_vectors_v1(run_ids text[]) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    orphaned bigint[];
BEGIN
    DELETE FROM historical_db.joint_embeddings j
    WHERE j.encoder_version IS NOT NULL AND j.joint_type = 'META_CONFIG_ENV_V0'
      AND j.model_id = 'joint-meta-config-env-v1' AND j.run_id = ANY (run_ids);
    WITH gone AS (
        DELETE FROM historical_db.run_entities r WHERE r.run_id = ANY (run_ids)
        RETURNING r.config_entity, r.env_entity, r.outcome_entity
    )
    SELECT array_agg(DISTINCT v.id) INTO orphaned
    FROM gone CROSS JOIN LATERAL (VALUES (gone.config_entity), (gone.env_entity), (gone.outcome_entity)) AS v (id)
    WHERE v.id IS NOT NULL;
    DELETE FROM historical_db.embedding_quarantine q WHERE q.run_id = ANY (run_ids);
    PERFORM historical_db.drop_orphans_v1(coalesce(orphaned, '{}'));
END
$fn$;

-- The column of run_entities (alias r) that references a branch space's entities: a constant of this file,
-- never text from a caller (space is one of the three).
CREATE FUNCTION historical_db.entity_ref_v1(space text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT CASE space WHEN 'config' THEN 'r.config_entity' WHEN 'env' THEN 'r.env_entity'
                      WHEN 'outcome' THEN 'r.outcome_entity' END
$fn$;

-- The filters of a search in a branch space, as SQL text over the parameters $2 (space), $3 (encoder version),
-- $4 (as of), $5 (strategies), $6 (configs) and $7 (scope): which runs (alias r, of run_entities) match
-- (runs = true), or which entities (alias e, of branch_entities) have a run that matches (runs = false). One
-- text for every path (walk, exact scan, distinct answers), so that they can never disagree on what matches;
-- arguments arrive only as parameters, never as part of the text.
CREATE FUNCTION historical_db.entity_filters_v1(space text, runs boolean) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT CASE WHEN runs THEN m.runs_matching
                ELSE 'e.branch = $2 AND e.encoder_version = $3 AND ($4::date IS NULL OR e.first_seen <= $4) '
                     || 'AND EXISTS (SELECT 1 FROM historical_db.run_entities r WHERE '
                     || historical_db.entity_ref_v1(space) || ' = e.entity_id AND ' || m.runs_matching || ')' END
    FROM (SELECT $w$
        r.encoder_version = $3
        AND ($4::date IS NULL OR r.as_of_date <= $4)
        AND ($5::text[] IS NULL OR r.strategy_id = ANY ($5))
        AND ($6::text[] IS NULL OR r.config_id = ANY ($6))
        AND ($7::jsonb IS NULL OR jsonb_build_object('run_id', r.run_id, 'config_id', r.config_id,
                                                     'strategy_id', r.strategy_id, 'source', 'meta-config-env')
                                  @> $7)
    $w$ AS runs_matching) m
$fn$;

-- A walk of a branch space's graph (half: its halfvec graph, else its float32 one): the first n entities it
-- meets that have a run matching the filters, as of a date those first seen by then. The planner is held to
-- the graph (or, as of an early date, to the prefix graph covering it): where n is a large share of the space,
-- it would sort the whole space instead, which is the exact scan the path rule chose not to run.
CREATE FUNCTION historical_db.walk_entities_v1(
    query vector, space text, encoder_version integer, as_of date, strategy_ids text[], config_ids text[],
    scope jsonb, n integer, half boolean
) RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
SET hnsw.iterative_scan = 'relaxed_order'
SET enable_seqscan = off
SET enable_sort = off
AS $fn$
DECLARE
    ids bigint[];
BEGIN
    EXECUTE $q$
        SELECT array_agg(e.entity_id) FROM (
            SELECT e.entity_id FROM historical_db.branch_entities e
            WHERE $q$ || historical_db.entity_filters_v1(space, false) || $q$
            ORDER BY $q$ || CASE WHEN half THEN 'e.vector::halfvec(384) <-> $1::halfvec(384)' ELSE 'e.vector <-> $1' END
                       || $q$
            LIMIT $8
        ) e
    $q$ INTO ids USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, n;
    RETURN ids;
END
$fn$;

-- The k nearest runs in a branch space (config, env, outcome): the nearest distinct entities, expanded to their
-- runs that match the filters, ordered by (distance, run_id). Distances are the entities' float32 ones.
-- The path rule of nearest_runs_v2 (sql/nearest_runs_asof_v1.sql), over entities:
-- 0. the space's graph is its halfvec graph over branch_entities if it has one, else its float32 graph; a
--    space with neither is answered by the exact scan;
-- 1. as of a date, the entities first seen by it are counted on a B-tree, stopping at T (T as in
--    nearest_runs_v2, over the space's entities); fewer than T, the exact scan answers;
-- 2. otherwise the graph is walked (iterative scans) for entities that have a matching run, as many as the
--    space's runs per entity say k runs need (never more than k: each has one), walking four times further
--    while the runs found are fewer than k; the runs of the entities found are ordered by exact distance;
-- 3. when the walk is exhausted with fewer than k runs, the exact scan answers instead.
-- The exact scan: every entity's distance (first seen by the date), sorted once; then the matching runs of the
-- nearest entities, as many as the space's runs per entity say k runs need, with every entity as far as the
-- last one taken (ties), four times as many while fewer than k runs match. The runs of the entities taken
-- that are nearer than every entity left out are the answer, exactly: the filters are tested only on the runs
-- of entities near the query, not on every entity (at 5,000 environments x 40 configs, 14 ms a search where
-- every entity was tested).
CREATE FUNCTION historical_db.nearest_entity_runs_v1(
    query vector, k integer, space text, encoder_version integer, as_of date, strategy_ids text[],
    config_ids text[], scope jsonb, exact boolean
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
SET hnsw.iterative_scan = 'relaxed_order'
AS $fn$
DECLARE
    ref constant text := historical_db.entity_ref_v1(space);
    runs_matching constant text := historical_db.entity_filters_v1(space, true);
    answer constant text := $w$
        SELECT ROW(r.run_id, r.config_id, r.strategy_id, r.as_of_date, d.distance,
                   jsonb_build_object('run_id', r.run_id, 'config_id', r.config_id, 'strategy_id', r.strategy_id,
                                      'source', 'meta-config-env'))::historical_db.run_match_v1 AS m
    $w$;
    half_graph regclass := to_regclass('historical_db.branch_entities_' || space || '_halfvec_hnsw');
    graph regclass := coalesce(half_graph, to_regclass('historical_db.branch_entities_' || space || '_hnsw'));
    prefixed boolean := to_regclass('historical_db.asof_' || space
        || CASE WHEN half_graph IS NULL THEN '_vector_1' ELSE '_halfvec_1' END) IS NOT NULL;
    found historical_db.run_match_v1[];
    ids bigint[];
    distances double precision[];
    entities integer;
    take integer;
    total double precision;
    runs_per_entity double precision;
    threshold integer;
    exact_runs integer;
    known integer;
    walk integer;
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
        SELECT count(*) INTO known FROM (
            SELECT 1 FROM historical_db.branch_entities e
            WHERE e.encoder_version = nearest_entity_runs_v1.encoder_version AND e.branch = space
              AND e.first_seen <= as_of
            LIMIT threshold
        ) s;
        exact := known < threshold;
    END IF;
    IF NOT exact THEN
        SELECT greatest(r.reltuples, 1) / greatest(g.reltuples, 1) INTO runs_per_entity
        FROM pg_class r, pg_class g
        WHERE r.oid = 'historical_db.run_entities'::regclass AND g.oid = graph;
        walk := least(k, greatest(1, ceil(1.5 * k / greatest(coalesce(runs_per_entity, 1), 1))))::integer;
        LOOP
            ids := historical_db.walk_entities_v1(query, space, encoder_version, as_of, strategy_ids, config_ids,
                                                  scope, walk, half_graph IS NOT NULL);
            EXECUTE 'SELECT array_agg(s.m ORDER BY (s.m).distance, (s.m).run_id) FROM (' || answer || $q$
                FROM (SELECT e.entity_id, l2_distance(e.vector, $1) AS distance FROM historical_db.branch_entities e
                      WHERE e.entity_id = ANY ($9)) d
                JOIN historical_db.run_entities r ON $q$ || ref || $q$ = d.entity_id
                WHERE $q$ || runs_matching || $q$
                ORDER BY d.distance, r.run_id
                LIMIT $8
            ) s $q$
            INTO found USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, k, ids;
            EXIT WHEN coalesce(cardinality(found), 0) >= k OR coalesce(cardinality(ids), 0) < walk OR walk >= k;
            walk := least(k, walk * 4);
        END LOOP;
        IF coalesce(cardinality(found), 0) >= k THEN
            RETURN QUERY SELECT * FROM unnest(found);
            RETURN;
        END IF;
    END IF;
    -- (the distances materialised first: a sort of the rows themselves carries each vector, 3x the time)
    WITH d AS MATERIALIZED (
        SELECT e.entity_id, l2_distance(e.vector, query) AS distance FROM historical_db.branch_entities e
        WHERE e.encoder_version = nearest_entity_runs_v1.encoder_version AND e.branch = space
          AND (nearest_entity_runs_v1.as_of IS NULL OR e.first_seen <= nearest_entity_runs_v1.as_of))
    SELECT array_agg(d.entity_id ORDER BY d.distance, d.entity_id), array_agg(d.distance ORDER BY d.distance, d.entity_id)
    INTO ids, distances FROM d;
    entities := coalesce(cardinality(ids), 0);
    IF entities = 0 THEN
        RETURN;
    END IF;
    SELECT greatest(r.reltuples, 1) INTO total FROM pg_class r WHERE r.oid = 'historical_db.run_entities'::regclass;
    take := least(entities, greatest(1, ceil(1.5 * k * entities / greatest(total, entities))))::integer;
    LOOP
        WHILE take < entities AND distances[take + 1] = distances[take] LOOP  -- every entity as far as the last
            take := take + 1;
        END LOOP;
        EXECUTE 'SELECT array_agg(s.m ORDER BY (s.m).distance, (s.m).run_id) FROM (' || answer || $q$
            FROM unnest($9::bigint[], $10::double precision[]) AS d (entity_id, distance)
            JOIN historical_db.run_entities r ON $q$ || ref || $q$ = d.entity_id
            WHERE $q$ || runs_matching || $q$
            ORDER BY d.distance, r.run_id
            LIMIT $8
        ) s $q$
        INTO found USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, k, ids[1:take],
                         distances[1:take];
        EXIT WHEN coalesce(cardinality(found), 0) >= k OR take >= entities;
        take := least(entities, take * 4);
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(found);
END
$fn$;

-- The worker behind every search and suggestion, replaced in place (same arguments, same answer contract):
-- the joint space as revision 0014 left it (sql/nearest_runs_asof_v1.sql), reading joint_embeddings itself;
-- the branch spaces from their entities (nearest_entity_runs_v1).
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
        WHERE $2 = 'joint' AND r.encoder_version = $3
          AND ($4::date IS NULL OR r.as_of_date <= $4)
          AND ($5::text[] IS NULL OR (r.entity_scope ->> 'strategy_id') = ANY ($5))
          AND ($6::text[] IS NULL OR (r.entity_scope ->> 'config_id') = ANY ($6))
          AND ($7::jsonb IS NULL OR r.entity_scope @> $7)
    $w$;
    answer constant text := $w$
        ROW(r.entity_scope ->> 'run_id', r.entity_scope ->> 'config_id', r.entity_scope ->> 'strategy_id',
            r.as_of_date, $w$;
    half_graph regclass := to_regclass('historical_db.joint_embeddings_halfvec_hnsw');
    graph regclass := coalesce(half_graph, to_regclass('historical_db.joint_embeddings_vector_hnsw'));
    prefixed boolean := to_regclass('historical_db.asof_joint'
        || CASE WHEN half_graph IS NULL THEN '_vector_1' ELSE '_halfvec_1' END) IS NOT NULL;
    found historical_db.run_match_v1[];
    total double precision;
    threshold integer;
    exact_runs integer;
    known integer;
BEGIN
    IF space <> 'joint' THEN
        RETURN QUERY SELECT * FROM historical_db.nearest_entity_runs_v1(
            query, k, space, encoder_version, as_of, strategy_ids, config_ids, scope, exact);
        RETURN;
    END IF;
    exact := coalesce(exact, false) OR graph IS NULL;
    IF NOT exact AND as_of IS NOT NULL THEN
        SELECT greatest(c.reltuples, 0) INTO total FROM pg_class c WHERE c.oid = graph;
        threshold := least(50000, greatest(1000, ceil(sqrt(5.3 * k * coalesce(total, 0)))))::integer;
        IF prefixed THEN
            SELECT (s.value #>> '{}')::integer INTO exact_runs FROM historical_db.settings s
            WHERE s.name = 'asof_exact_runs';
            threshold := least(threshold, greatest(1, ceil(coalesce(exact_runs, 2000) * k / 10.0)))::integer;
        END IF;
        SELECT count(*) INTO known FROM (
            SELECT 1 FROM historical_db.joint_embeddings r
            WHERE r.encoder_version = nearest_runs_v2.encoder_version AND r.as_of_date <= as_of
            LIMIT threshold
        ) s;
        exact := known < threshold;
    END IF;
    IF NOT exact AND half_graph IS NOT NULL THEN
        EXECUTE $q$
            SELECT array_agg(s.m ORDER BY (s.m).distance, (s.m).run_id) FROM (
                SELECT $q$ || answer || $q$ r.vector <-> $1, r.entity_scope)::historical_db.run_match_v1 AS m
                FROM historical_db.joint_embeddings r $q$ || matching || $q$
                ORDER BY r.vector::halfvec(384) <-> $1::halfvec(384)
                LIMIT $8
            ) s
        $q$ INTO found USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, k;
    ELSIF NOT exact THEN
        EXECUTE $q$
            SELECT array_agg(s.m ORDER BY (s.m).distance, (s.m).run_id) FROM (
                SELECT $q$ || answer || $q$ r.vector <-> $1, r.entity_scope)::historical_db.run_match_v1 AS m
                FROM historical_db.joint_embeddings r $q$ || matching || $q$
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
        SELECT r.entity_scope ->> 'run_id', r.entity_scope ->> 'config_id', r.entity_scope ->> 'strategy_id',
               r.as_of_date, l2_distance(r.vector, $1), r.entity_scope
        FROM historical_db.joint_embeddings r $q$ || matching || $q$
        ORDER BY l2_distance(r.vector, $1), r.entity_scope ->> 'run_id'
        LIMIT $8
    $q$ USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, k;
END
$fn$;

-- Every stored vector by space, replaced in place (same columns): a branch space's rows are its runs, each
-- with its entity's vector. A plain ORDER BY vector <-> (a query) over a branch space of this view cannot walk
-- a graph (the graphs are over entities): search_runs, or the query in docs/sql.md over branch_entities, can.
CREATE OR REPLACE VIEW historical_db.run_vectors_v1 AS
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
SELECT b.branch, r.run_id, r.config_id, r.strategy_id, r.as_of_date, r.encoder_version,
       jsonb_build_object('run_id', r.run_id, 'config_id', r.config_id, 'strategy_id', r.strategy_id,
                          'source', 'meta-config-env'),
       e.vector
FROM historical_db.run_entities r
CROSS JOIN LATERAL (VALUES ('config', r.config_entity), ('env', r.env_entity), ('outcome', r.outcome_entity))
    AS b (branch, entity_id)
JOIN historical_db.branch_entities e ON e.entity_id = b.entity_id;

-- "Which environments are like this one": the k nearest distinct entities of a branch space that have a run
-- matching the filters (as of a date: first seen by it), each with the number of its matching runs, their
-- first and last as_of_date, the earliest such run and the branch record itself. Exact, or by the space's
-- graph (the walk of nearest_entity_runs_v1, without the expansion).
CREATE TYPE historical_db.entity_match_v1 AS (
    entity_id   bigint,
    distance    double precision,
    runs        integer,
    first_date  date,
    last_date   date,
    first_run   text,
    record      jsonb
);

CREATE FUNCTION historical_db.search_distinct_v1(
    query vector, k integer DEFAULT 10, space text DEFAULT 'env', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false, encoder_version integer DEFAULT NULL
) RETURNS SETOF historical_db.entity_match_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    version integer := historical_db.query_version_v2(search_distinct_v1.encoder_version);
    half_graph regclass;
    graph regclass;
    ids bigint[];
    sorted bigint[];
    take integer;
BEGIN
    IF query IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'the query vector is NULL';
    END IF;
    PERFORM historical_db.check_search_args_v1(query, k, space);
    IF space = 'joint' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'the joint space has one vector per run: distinct entities are those of config, env or outcome';
    END IF;
    half_graph := to_regclass('historical_db.branch_entities_' || space || '_halfvec_hnsw');
    graph := coalesce(half_graph, to_regclass('historical_db.branch_entities_' || space || '_hnsw'));
    IF NOT coalesce(exact, false) AND graph IS NOT NULL THEN
        ids := historical_db.walk_entities_v1(query, space, version, as_of, strategy_ids, config_ids, scope, k,
                                              half_graph IS NOT NULL);
    END IF;
    IF coalesce(cardinality(ids), 0) < k THEN
        -- exact, or a walk that ran out: every entity first seen by the date, sorted by distance once, and the
        -- first k of them that have a matching run, testing the nearest 2k, then four times as many, and so on
        WITH d AS MATERIALIZED (
            SELECT e.entity_id, l2_distance(e.vector, query) AS distance FROM historical_db.branch_entities e
            WHERE e.encoder_version = version AND e.branch = space
              AND (search_distinct_v1.as_of IS NULL OR e.first_seen <= search_distinct_v1.as_of))
        SELECT array_agg(d.entity_id ORDER BY d.distance, d.entity_id) INTO sorted FROM d;
        take := 2 * k;
        LOOP
            EXECUTE $q$
                SELECT array_agg(d.entity_id ORDER BY d.n) FROM unnest($9::bigint[]) WITH ORDINALITY AS d (entity_id, n)
                WHERE EXISTS (SELECT 1 FROM historical_db.run_entities r
                              WHERE $q$ || historical_db.entity_ref_v1(space) || $q$ = d.entity_id
                                AND $q$ || historical_db.entity_filters_v1(space, true) || $q$)
            $q$ INTO ids USING query, space, version, as_of, strategy_ids, config_ids, scope, k, sorted[1:take];
            EXIT WHEN coalesce(cardinality(ids), 0) >= k OR take >= coalesce(cardinality(sorted), 0);
            take := take * 4;
        END LOOP;
        ids := ids[1:k];
    END IF;
    RETURN QUERY EXECUTE $q$
        SELECT e.entity_id, l2_distance(e.vector, $1), count(*)::integer, min(r.as_of_date), max(r.as_of_date),
               (array_agg(r.run_id ORDER BY r.as_of_date, r.run_id))[1],
               (SELECT CASE $2 WHEN 'config' THEN f.config WHEN 'env' THEN f.env ELSE f.outcome END
                FROM historical_db.runs f WHERE f.run_id = (array_agg(r.run_id ORDER BY r.as_of_date, r.run_id))[1])
        FROM historical_db.branch_entities e
        JOIN historical_db.run_entities r ON $q$ || historical_db.entity_ref_v1(space) || $q$ = e.entity_id
        WHERE e.entity_id = ANY ($9) AND $q$ || historical_db.entity_filters_v1(space, true) || $q$
        GROUP BY e.entity_id
        ORDER BY 2, 1
    $q$ USING query, space, version, as_of, strategy_ids, config_ids, scope, k, ids;
END
$fn$;

-- The online path, replaced in place (same arguments, same result): store_run_v1.sql's rule as version 3
-- left it (one run and its four vectors in one statement, a share lock on the encoder version, a refusal
-- with SQLSTATE 55000 where the version or its fingerprint is not the active one), with its branch vectors
-- written as entities (attach_entities_v1) and a changed record's vectors forgotten by forget_vectors_v1.
CREATE OR REPLACE FUNCTION historical_db.store_run_v3(
    run jsonb, record_sha256 text, encoder_version integer, fingerprint text,
    joint vector, config vector, env vector, outcome vector, legacy_f32 bytea DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    id text := run ->> 'run_id';
    written integer;
BEGIN
    IF id IS NULL OR id = '' OR run ->> 'as_of_date' IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'store_run_v3: the run needs run_id and as_of_date';
    END IF;
    PERFORM 1 FROM historical_db.encoder_versions v
    WHERE v.version = encoder_version AND v.model_id = 'joint-meta-config-env-v1' AND v.is_active
      AND v.fingerprint = store_run_v3.fingerprint
    FOR SHARE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'encoder version ' || coalesce(encoder_version::text, 'NULL')
                      || ' with that fingerprint is not the active one',
            HINT = 'Encode the run again with the active version.';
    END IF;
    IF vector_dims(joint) <> 384 OR vector_dims(config) <> 384 OR vector_dims(env) <> 384
       OR vector_dims(outcome) <> 384 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'store_run_v3: every vector must have 384 dimensions';
    END IF;

    INSERT INTO historical_db.runs AS r
        (run_id, config_id, strategy_id, as_of_date, config, env, outcome, extra, record_sha256)
    VALUES (id, run ->> 'config_id', run ->> 'strategy_id', (run ->> 'as_of_date')::date,
            coalesce(run -> 'config', '{}'), coalesce(run -> 'env', '{}'), coalesce(run -> 'outcome', '{}'),
            coalesce(run -> 'extra', '{}'), record_sha256)
    ON CONFLICT (run_id) DO UPDATE SET
        config_id = excluded.config_id, strategy_id = excluded.strategy_id, as_of_date = excluded.as_of_date,
        config = excluded.config, env = excluded.env, outcome = excluded.outcome, extra = excluded.extra,
        record_sha256 = excluded.record_sha256, updated_at = now()
    WHERE r.record_sha256 <> excluded.record_sha256;
    GET DIAGNOSTICS written = ROW_COUNT;
    IF written > 0 THEN  -- new or changed: vectors of an earlier form of this run are stale
        PERFORM historical_db.forget_vectors_v1(ARRAY[id]);
    END IF;

    IF legacy_f32 IS NULL THEN
        INSERT INTO historical_db.joint_embeddings
            (run_id, joint_type, as_of_date, entity_scope, model_id, vector, encoder_version)
        VALUES (id, 'META_CONFIG_ENV_V0', (run ->> 'as_of_date')::date,
                jsonb_build_object('run_id', id, 'config_id', run ->> 'config_id',
                                   'strategy_id', run ->> 'strategy_id', 'source', 'meta-config-env'),
                'joint-meta-config-env-v1', joint, encoder_version)
        ON CONFLICT (joint_type, model_id, run_id, encoder_version)
            WHERE encoder_version IS NOT NULL DO NOTHING;
    ELSE  -- the table was converted from float32 bytes: older readers still read them
        INSERT INTO historical_db.joint_embeddings
            (run_id, joint_type, as_of_date, entity_scope, model_id, vector, encoder_version, vector_f32)
        VALUES (id, 'META_CONFIG_ENV_V0', (run ->> 'as_of_date')::date,
                jsonb_build_object('run_id', id, 'config_id', run ->> 'config_id',
                                   'strategy_id', run ->> 'strategy_id', 'source', 'meta-config-env'),
                'joint-meta-config-env-v1', joint, encoder_version, legacy_f32)
        ON CONFLICT (joint_type, model_id, run_id, encoder_version)
            WHERE encoder_version IS NOT NULL DO NOTHING;
    END IF;
    PERFORM historical_db.attach_entities_v1(encoder_version, ARRAY[id], ARRAY[config], ARRAY[env], ARRAY[outcome]);
    RETURN id;
END
$fn$;

-- Embedding inside the database, replaced in place (same argument, same result): embed_pending_v1.sql's rule
-- as version 2 left it (the writers' advisory lock, the active version held FOR SHARE, runs locked FOR SHARE,
-- quarantine), with its branch vectors written as entities (attach_entities_v1).
CREATE OR REPLACE FUNCTION historical_db.embed_pending_v2(max_runs integer DEFAULT 1000)
RETURNS TABLE (encoder_version integer, embedded integer, quarantined integer)
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
#variable_conflict use_column
DECLARE
    target integer;
    legacy boolean;
BEGIN
    IF max_runs IS NULL OR max_runs < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'max_runs must be 1 or more, got ' || coalesce(max_runs::text, 'NULL');
    END IF;
    PERFORM pg_advisory_xact_lock(120282511668080);  -- EMBED_LOCK_KEY: one writer of vectors at a time
    -- The active version, held FOR SHARE until commit: an activation of another one waits for this
    -- transaction (and then deletes its vectors with the old version's), or has already switched.
    FOR attempt IN 1..3 LOOP
        target := historical_db.encoder_version_v1(NULL);
        PERFORM 1 FROM historical_db.encoder_versions v WHERE v.version = target AND v.is_active
        FOR SHARE;
        EXIT WHEN FOUND;
        IF attempt = 3 THEN
            RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
                MESSAGE = 'the active encoder version keeps changing: is a rebuild switching?';
        END IF;
    END LOOP;
    legacy := EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = 'historical_db.joint_embeddings'::regclass
                      AND a.attname = 'vector_f32' AND NOT a.attisdropped);
    CREATE TEMP TABLE IF NOT EXISTS embed_pending_rows (
        run_id text, config_id text, strategy_id text, as_of_date date, record_sha256 text, joint vector,
        config vector, env vector, outcome vector, field text, reason text
    ) ON COMMIT DELETE ROWS;
    TRUNCATE pg_temp.embed_pending_rows;
    INSERT INTO pg_temp.embed_pending_rows
    SELECT p.run_id, p.config_id, p.strategy_id, p.as_of_date, p.record_sha256, e.joint, e.config_vector,
           e.env_vector, e.outcome_vector, e.field, e.reason
    FROM (SELECT r.* FROM historical_db.runs r
          WHERE NOT EXISTS (SELECT 1 FROM historical_db.joint_embeddings j
                            WHERE j.encoder_version = target AND j.joint_type = 'META_CONFIG_ENV_V0'
                              AND j.model_id = 'joint-meta-config-env-v1' AND j.run_id = r.run_id)
            AND NOT EXISTS (SELECT 1 FROM historical_db.embedding_quarantine q
                            WHERE q.encoder_version = target AND q.run_id = r.run_id
                              AND q.record_sha256 = r.record_sha256)
          ORDER BY r.run_id LIMIT max_runs
          FOR SHARE OF r) p
    CROSS JOIN LATERAL historical_db.encode_run_v1(target, p.config, p.env, p.outcome) e;

    IF legacy THEN  -- the table was converted from float32 bytes: older readers still read them
        INSERT INTO historical_db.joint_embeddings
            (run_id, joint_type, as_of_date, entity_scope, model_id, vector, encoder_version, vector_f32)
        SELECT s.run_id, 'META_CONFIG_ENV_V0', s.as_of_date,
               jsonb_build_object('run_id', s.run_id, 'config_id', s.config_id, 'strategy_id', s.strategy_id,
                                  'source', 'meta-config-env'),
               'joint-meta-config-env-v1', s.joint, target,
               (SELECT string_agg(substr(b, 4 * i + 8, 1) || substr(b, 4 * i + 7, 1) || substr(b, 4 * i + 6, 1)
                                  || substr(b, 4 * i + 5, 1), ''::bytea ORDER BY i)
                FROM (SELECT vector_send(s.joint) AS b) v, generate_series(0, 383) i)
        FROM pg_temp.embed_pending_rows s WHERE s.field IS NULL
        ON CONFLICT (joint_type, model_id, run_id, encoder_version)
            WHERE encoder_version IS NOT NULL DO NOTHING;
    ELSE
        INSERT INTO historical_db.joint_embeddings
            (run_id, joint_type, as_of_date, entity_scope, model_id, vector, encoder_version)
        SELECT s.run_id, 'META_CONFIG_ENV_V0', s.as_of_date,
               jsonb_build_object('run_id', s.run_id, 'config_id', s.config_id, 'strategy_id', s.strategy_id,
                                  'source', 'meta-config-env'),
               'joint-meta-config-env-v1', s.joint, target
        FROM pg_temp.embed_pending_rows s WHERE s.field IS NULL
        ON CONFLICT (joint_type, model_id, run_id, encoder_version)
            WHERE encoder_version IS NOT NULL DO NOTHING;
    END IF;
    GET DIAGNOSTICS embedded = ROW_COUNT;
    PERFORM historical_db.attach_entities_v1(target, array_agg(s.run_id), array_agg(s.config), array_agg(s.env),
                                             array_agg(s.outcome))
    FROM pg_temp.embed_pending_rows s WHERE s.field IS NULL;
    INSERT INTO historical_db.embedding_quarantine (run_id, encoder_version, field, reason, record_sha256)
    SELECT s.run_id, target, s.field, s.reason, s.record_sha256 FROM pg_temp.embed_pending_rows s WHERE s.field IS NOT NULL
    ON CONFLICT (run_id, encoder_version) DO UPDATE SET field = excluded.field, reason = excluded.reason,
        record_sha256 = excluded.record_sha256, quarantined_at = now();
    GET DIAGNOSTICS quarantined = ROW_COUNT;
    encoder_version := target;
    RETURN NEXT;
END
$fn$;

-- The functions that write are the writer's alone (as sql/roles_v4.sql made them).
REVOKE EXECUTE ON FUNCTION historical_db.attach_entities_v1(integer, text[], vector[], vector[], vector[]),
    historical_db.drop_orphans_v1(bigint[]), historical_db.forget_vectors_v1(text[]) FROM PUBLIC;
DO $grant$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'metaspace_writer') THEN
        GRANT EXECUTE ON FUNCTION historical_db.attach_entities_v1(integer, text[], vector[], vector[], vector[]),
            historical_db.drop_orphans_v1(bigint[]), historical_db.forget_vectors_v1(text[]) TO metaspace_writer;
    END IF;
END
$grant$;
