-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- Revision 0016 moved joint_embeddings' rule "one vector per run and version" from the expression
-- (entity_scope ->> 'run_id') to the run_id column, the column a Citus cluster distributes the table by. The
-- ON CONFLICT target of store_run_v1, store_run_v2 and embed_pending_v1 named the old expression and no
-- longer matches an index, so their clients would get an error. They keep their names, arguments and
-- results and hand over to the versions that write run_id: store_run_v3 and embed_pending_v2.
-- store_run_v1 thereby gains version 2's share lock on the encoder version (the fix version 2 was made for),
-- and a refusal names store_run_v3. Their grants are kept (CREATE OR REPLACE keeps a function's ACL).
CREATE OR REPLACE FUNCTION historical_db.store_run_v1(
    run jsonb, record_sha256 text, encoder_version integer, fingerprint text,
    joint vector, config vector, env vector, outcome vector, legacy_f32 bytea DEFAULT NULL
) RETURNS text
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $fn$
    SELECT historical_db.store_run_v3(run, record_sha256, encoder_version, fingerprint, joint, config, env,
                                      outcome, legacy_f32)
$fn$;

CREATE OR REPLACE FUNCTION historical_db.store_run_v2(
    run jsonb, record_sha256 text, encoder_version integer, fingerprint text,
    joint vector, config vector, env vector, outcome vector, legacy_f32 bytea DEFAULT NULL
) RETURNS text
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $fn$
    SELECT historical_db.store_run_v3(run, record_sha256, encoder_version, fingerprint, joint, config, env,
                                      outcome, legacy_f32)
$fn$;

CREATE OR REPLACE FUNCTION historical_db.embed_pending_v1(max_runs integer DEFAULT 1000)
RETURNS TABLE (encoder_version integer, embedded integer, quarantined integer)
LANGUAGE sql VOLATILE
SET search_path FROM CURRENT
AS $fn$
    SELECT * FROM historical_db.embed_pending_v2(max_runs)
$fn$;
