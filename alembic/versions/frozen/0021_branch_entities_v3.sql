-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- attach_entities_v2 (branch_entities_v2.sql, revision 0020) replaced in place (revision 0021), the same rule
-- and the same answers. Its step that moves an entity's first_seen back joined the batch's records to
-- branch_entities by the key, with "n.first_seen < e.first_seen" beside it. Until the table has statistics (a
-- new database's first embed-runs, before autovacuum gets to it, which under load was 20 minutes), the planner
-- priced the index on (encoder_version, branch, first_seen), with that comparison as its range, the same as the
-- unique key's and took it: for each of a batch's records it read every entity of the branch seen later,
-- filtering by key. The plan is kept for the session, so the cost of each batch grew with the table: at 120,000
-- runs of a sweep one batch of 5,000 runs took over 10 minutes instead of a few seconds. Against first_seen + 0,
-- an expression, the comparison is no index condition, and the key is the only index that fits the join (the same
-- answers: a date plus 0 days is that date, infinity included, which a difference of dates would refuse).
CREATE OR REPLACE FUNCTION historical_db.attach_entities_v2(
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
              AND n.first_seen < e.first_seen + 0;  -- (no index condition: the top of this file says why)
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
