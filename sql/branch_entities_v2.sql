-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- The entity writers' steps in a form Citus plans (revision 0020, issue 26), the same rules as
-- branch_entities_v1.sql's on one server. There, attach_entities_v1 read the runs inside statements that wrote
-- branch_entities (on Citus a reference table: each write runs on every node, and a read of the distributed runs
-- from within it is a distributed query nested in a shard's, which Citus refuses), and drop_orphans_v1 deleted
-- through a correlated anti-join to run_entities (distributed) with FOR UPDATE (row locks over several shards,
-- refused too). Here the runs are read once, by one query from the coordinator, and every later step works on
-- those values; the orphans are found by a query per table and removed by id. The branch spaces' walk
-- (walk_entities_v1) tested each entity with a correlated EXISTS over run_entities, which Citus refuses from a
-- reference table: on Citus the walk takes the nearest entities, then keeps those with a matching run (one query
-- over the shards); on one server it is unchanged. search_distinct_v1's last step read each entity's first run
-- through a correlated subquery, run on the shards as a nested distributed query: now the runs are read by id.
-- The released names keep their arguments and results and hand over to these (one body per rule).

-- Store the runs' branch vectors for encoder version target (attach_entities_v1's rule): each distinct branch
-- record once (its first writer's vector; ON CONFLICT DO NOTHING, so concurrent writers of one new entity meet
-- there), its first_seen moved back where a run dated earlier now has it, and each run's references (a run
-- already referenced for the version is left alone). Returns the runs referenced. An entity removed as an orphan
-- by another session between its lookup and its reference is written again: the whole step is retried, up to
-- three times.
CREATE FUNCTION historical_db.attach_entities_v2(
    target integer, run_ids text[], configs vector[], envs vector[], outcomes vector[]
) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    k_run text[];
    k_date date[];
    k_strategy text[];
    k_config text[];
    k_branch text[];
    k_key bytea[];
    k_vector vector[];
    wanted integer;
    attached integer;
BEGIN
    -- the runs' records and dates, read once (entity_keys_v1: the key of each branch record)
    SELECT array_agg(k.run_id ORDER BY k.run_id, k.branch), array_agg(k.as_of_date ORDER BY k.run_id, k.branch),
           array_agg(k.strategy_id ORDER BY k.run_id, k.branch), array_agg(k.config_id ORDER BY k.run_id, k.branch),
           array_agg(k.branch ORDER BY k.run_id, k.branch), array_agg(k.record_key ORDER BY k.run_id, k.branch),
           array_agg(k.vector ORDER BY k.run_id, k.branch)
    INTO k_run, k_date, k_strategy, k_config, k_branch, k_key, k_vector
    FROM historical_db.entity_keys_v1(run_ids, configs, envs, outcomes) k;
    IF k_run IS NULL THEN
        RETURN 0;
    END IF;
    SELECT count(DISTINCT u.run_id) INTO wanted FROM unnest(run_ids) AS u (run_id);
    FOR attempt IN 1..3 LOOP
        BEGIN
            -- (in key order, as every writer inserts: two writers never wait on each other in a cycle)
            INSERT INTO historical_db.branch_entities (encoder_version, first_seen, branch, record_key, vector)
            SELECT DISTINCT ON (k.branch, k.record_key) target, min(k.as_of_date) OVER w, k.branch, k.record_key,
                   k.vector
            FROM unnest(k_run, k_date, k_branch, k_key, k_vector) AS k (run_id, as_of_date, branch, record_key, vector)
            WINDOW w AS (PARTITION BY k.branch, k.record_key)
            ORDER BY k.branch, k.record_key, k.as_of_date, k.run_id
            ON CONFLICT (encoder_version, branch, record_key) DO NOTHING;
            UPDATE historical_db.branch_entities e SET first_seen = n.first_seen
            FROM (SELECT k.branch, k.record_key, min(k.as_of_date) AS first_seen
                  FROM unnest(k_date, k_branch, k_key) AS k (as_of_date, branch, record_key)
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
            FROM unnest(k_run, k_date, k_strategy, k_config, k_branch, k_key)
                 AS k (run_id, as_of_date, strategy_id, config_id, branch, record_key)
            JOIN historical_db.branch_entities e
              ON e.encoder_version = target AND e.branch = k.branch AND e.record_key = k.record_key
            GROUP BY k.run_id
            HAVING count(*) = 3
            ORDER BY k.run_id
            ON CONFLICT (run_id, encoder_version) DO NOTHING;
            GET DIAGNOSTICS attached = ROW_COUNT;
            -- an entity found by the first step and removed as an orphan by another session before this one
            -- leaves its runs unreferenced: never a run without one of its three vectors, the whole step again
            -- (the runs referenced counted by run_id: a filter on the distribution column on Citus)
            IF (SELECT count(*) FROM historical_db.run_entities r
                WHERE r.run_id = ANY (run_ids) AND r.encoder_version = target) < wanted THEN
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

-- The entities among ids (all, where ids is NULL) that no run references any more: removed; returns how many
-- (drop_orphans_v1's rule). The references are read by one query per branch column of run_entities; an entity
-- a writer is referencing at that moment is left (SKIP LOCKED: the writer's reference holds a key lock on it);
-- one a writer referenced and committed after the read makes the delete fail its foreign key, and the step is
-- tried again, up to three times (then left to the next sweep: an orphan left over costs a row, a referenced
-- entity removed would cost a run its vector).
CREATE FUNCTION historical_db.drop_orphans_v2(ids bigint[] DEFAULT NULL) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    orphans bigint[];
    dropped integer := 0;
BEGIN
    IF ids IS NOT NULL AND cardinality(ids) = 0 THEN
        RETURN 0;
    END IF;
    FOR attempt IN 1..3 LOOP
        BEGIN
            SELECT array_agg(c.entity_id) INTO orphans
            FROM historical_db.branch_entities c
            WHERE (ids IS NULL OR c.entity_id = ANY (ids))
              AND NOT (c.branch = 'config' AND c.entity_id IN (
                       SELECT r.config_entity FROM historical_db.run_entities r
                       WHERE ids IS NULL OR r.config_entity = ANY (ids)))
              AND NOT (c.branch = 'env' AND c.entity_id IN (
                       SELECT r.env_entity FROM historical_db.run_entities r
                       WHERE ids IS NULL OR r.env_entity = ANY (ids)))
              AND NOT (c.branch = 'outcome' AND c.entity_id IN (
                       SELECT r.outcome_entity FROM historical_db.run_entities r
                       WHERE ids IS NULL OR r.outcome_entity = ANY (ids)));
            IF orphans IS NULL THEN
                RETURN 0;
            END IF;
            DELETE FROM historical_db.branch_entities e
            WHERE e.entity_id IN (SELECT c.entity_id FROM historical_db.branch_entities c
                                  WHERE c.entity_id = ANY (orphans) FOR UPDATE SKIP LOCKED);
            GET DIAGNOSTICS dropped = ROW_COUNT;
            RETURN dropped;
        EXCEPTION WHEN foreign_key_violation THEN
            dropped := 0;
        END;
    END LOOP;
    RETURN dropped;
END
$fn$;

-- Whether a table of this schema is distributed by Citus (hash): the Citus catalog is read only where it exists.
CREATE FUNCTION historical_db.distributed_v1(relation regclass) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    found boolean := false;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
        EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1 AND partmethod = ''h'')'
        INTO found USING relation;
    END IF;
    RETURN found;
END
$fn$;

-- A walk of a branch space's graph (walk_entities_v1's rule): the first n entities it meets that have a run
-- matching the filters, as of a date those first seen by then. On Citus, where run_entities is distributed and
-- branch_entities a reference table, the walk takes the first n entities first seen by the date, and keeps those
-- with a matching run (found by one query over the shards): with a filter that leaves an entity without runs it
-- returns fewer than n, and the caller walks further or scans, as it does when a walk runs out.
CREATE FUNCTION historical_db.walk_entities_v2(
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
    matched bigint[];
    distance constant text := CASE WHEN half THEN 'e.vector::halfvec(384) <-> $1::halfvec(384)'
                                   ELSE 'e.vector <-> $1' END;
BEGIN
    IF NOT historical_db.distributed_v1('historical_db.run_entities') THEN
        EXECUTE $q$
            SELECT array_agg(e.entity_id) FROM (
                SELECT e.entity_id FROM historical_db.branch_entities e
                WHERE $q$ || historical_db.entity_filters_v1(space, false) || $q$
                ORDER BY $q$ || distance || $q$
                LIMIT $8
            ) e
        $q$ INTO ids USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, n;
        RETURN ids;
    END IF;
    EXECUTE $q$
        SELECT array_agg(e.entity_id) FROM (
            SELECT e.entity_id FROM historical_db.branch_entities e
            WHERE e.branch = $2 AND e.encoder_version = $3 AND ($4::date IS NULL OR e.first_seen <= $4)
            ORDER BY $q$ || distance || $q$
            LIMIT $8
        ) e
    $q$ INTO ids USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, n;
    EXECUTE 'SELECT array_agg(DISTINCT ' || historical_db.entity_ref_v1(space) || ') FROM historical_db.run_entities r '
            || 'WHERE ' || historical_db.entity_ref_v1(space) || ' = ANY ($9) AND '
            || historical_db.entity_filters_v1(space, true)
    INTO matched USING query, space, encoder_version, as_of, strategy_ids, config_ids, scope, n, ids;
    RETURN ARRAY(SELECT u.id FROM unnest(ids) WITH ORDINALITY AS u (id, i) WHERE u.id = ANY (matched) ORDER BY u.i);
END
$fn$;

-- The nearest distinct entities of a branch space, each with its runs' count and dates (search_distinct_v1's
-- rule), with the entities' matching runs found by queries that take entity ids, not by correlated subqueries.
CREATE FUNCTION historical_db.search_distinct_v2(
    query vector, k integer DEFAULT 10, space text DEFAULT 'env', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false, encoder_version integer DEFAULT NULL
) RETURNS SETOF historical_db.entity_match_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    version integer := historical_db.query_version_v2(search_distinct_v2.encoder_version);
    ref text;
    matching text;
    half_graph regclass;
    graph regclass;
    ids bigint[];
    sorted bigint[];
    matched bigint[];
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
    ref := historical_db.entity_ref_v1(space);
    matching := historical_db.entity_filters_v1(space, true);
    half_graph := to_regclass('historical_db.branch_entities_' || space || '_halfvec_hnsw');
    graph := coalesce(half_graph, to_regclass('historical_db.branch_entities_' || space || '_hnsw'));
    IF NOT coalesce(exact, false) AND graph IS NOT NULL THEN
        ids := historical_db.walk_entities_v2(query, space, version, as_of, strategy_ids, config_ids, scope, k,
                                              half_graph IS NOT NULL);
    END IF;
    IF coalesce(cardinality(ids), 0) < k THEN
        -- exact, or a walk that ran out: every entity first seen by the date, sorted by distance once, and the
        -- first k of them that have a matching run, testing the nearest 2k, then four times as many, and so on
        WITH d AS MATERIALIZED (
            SELECT e.entity_id, l2_distance(e.vector, query) AS distance FROM historical_db.branch_entities e
            WHERE e.encoder_version = version AND e.branch = space
              AND (search_distinct_v2.as_of IS NULL OR e.first_seen <= search_distinct_v2.as_of))
        SELECT array_agg(d.entity_id ORDER BY d.distance, d.entity_id) INTO sorted FROM d;
        take := 2 * k;
        LOOP
            EXECUTE 'SELECT array_agg(DISTINCT ' || ref || ') FROM historical_db.run_entities r WHERE '
                    || ref || ' = ANY ($9) AND ' || matching
            INTO matched USING query, space, version, as_of, strategy_ids, config_ids, scope, k, sorted[1:take];
            ids := ARRAY(SELECT u.id FROM unnest(sorted[1:take]) WITH ORDINALITY AS u (id, i)
                         WHERE u.id = ANY (matched) ORDER BY u.i);
            EXIT WHEN coalesce(cardinality(ids), 0) >= k OR take >= coalesce(cardinality(sorted), 0);
            take := take * 4;
        END LOOP;
        ids := ids[1:k];
    END IF;
    -- each entity's matching runs: how many, the first and last dates, the first run (by date, then id), whose
    -- record is the entity's
    RETURN QUERY EXECUTE $q$
        WITH m AS (
            SELECT $q$ || ref || $q$ AS entity_id, count(*)::integer AS runs, min(r.as_of_date) AS first_date,
                   max(r.as_of_date) AS last_date,
                   -- (the first run by date, then id: a date as YYYYMMDD text orders as the date, whatever DateStyle)
                   min(ARRAY[to_char(r.as_of_date, 'YYYYMMDD'), r.run_id]) AS first
            FROM historical_db.run_entities r
            WHERE $q$ || ref || $q$ = ANY ($9) AND $q$ || matching || $q$
            GROUP BY 1
        ), f AS (
            SELECT f.run_id, CASE $2 WHEN 'config' THEN f.config WHEN 'env' THEN f.env ELSE f.outcome END AS record
            FROM historical_db.runs f WHERE f.run_id = ANY (ARRAY(SELECT m.first[2] FROM m))
        )
        SELECT e.entity_id, l2_distance(e.vector, $1), m.runs, m.first_date, m.last_date, m.first[2], f.record
        FROM historical_db.branch_entities e JOIN m ON m.entity_id = e.entity_id
        LEFT JOIN f ON f.run_id = m.first[2]
        ORDER BY 2, 1
    $q$ USING query, space, version, as_of, strategy_ids, config_ids, scope, k, ids;
END
$fn$;

-- The online path, replaced in place again (same arguments, same result): branch_entities_v1.sql's store_run_v3
-- with what Citus needs: a changed run's updated_at is the inserted row's default (the same now(); Citus takes only
-- immutable functions in ON CONFLICT DO UPDATE SET), its entities attached by attach_entities_v2, and Citus's
-- sequential mode for its statements.
CREATE OR REPLACE FUNCTION historical_db.store_run_v3(
    run jsonb, record_sha256 text, encoder_version integer, fingerprint text,
    joint vector, config vector, env vector, outcome vector, legacy_f32 bytea DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql VOLATILE
SET search_path FROM CURRENT
-- (on Citus: its statements over several shards one at a time, so that it may write the reference table
-- branch_entities after them; on one server a setting nothing reads)
SET citus.multi_shard_modify_mode = 'sequential'
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
        record_sha256 = excluded.record_sha256, updated_at = excluded.updated_at
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
    PERFORM historical_db.attach_entities_v2(encoder_version, ARRAY[id], ARRAY[config], ARRAY[env], ARRAY[outcome]);
    RETURN id;
END
$fn$;

-- The released names hand over (same arguments, same results).
CREATE OR REPLACE FUNCTION historical_db.walk_entities_v1(
    query vector, space text, encoder_version integer, as_of date, strategy_ids text[], config_ids text[],
    scope jsonb, n integer, half boolean
) RETURNS bigint[]
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT historical_db.walk_entities_v2(query, space, encoder_version, as_of, strategy_ids, config_ids, scope, n,
                                          half)
$fn$;

CREATE OR REPLACE FUNCTION historical_db.search_distinct_v1(
    query vector, k integer DEFAULT 10, space text DEFAULT 'env', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false, encoder_version integer DEFAULT NULL
) RETURNS SETOF historical_db.entity_match_v1
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.search_distinct_v2(query, k, space, as_of, strategy_ids, config_ids, scope, exact,
                                                   encoder_version)
$fn$;
CREATE OR REPLACE FUNCTION historical_db.attach_entities_v1(
    target integer, run_ids text[], configs vector[], envs vector[], outcomes vector[]
) RETURNS integer
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $fn$ SELECT historical_db.attach_entities_v2(target, run_ids, configs, envs, outcomes) $fn$;

CREATE OR REPLACE FUNCTION historical_db.drop_orphans_v1(ids bigint[] DEFAULT NULL) RETURNS integer
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $fn$ SELECT historical_db.drop_orphans_v2(ids) $fn$;
