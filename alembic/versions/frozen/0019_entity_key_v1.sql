-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- The key of a branch record (revision 0019): a distinct config, env or outcome record is stored once
-- (historical_db.branch_entities), keyed by encoder version, branch and this: the sha256 of the record's jsonb
-- text, jsonb's canonical form (keys ordered, spacing normalised), so that two runs with the same branch record
-- share one entity (two spellings of one number, 1.0 and 1.00, stay two entities with equal vectors: a copy,
-- never a wrong vector). Every writer computes it here, in SQL, from the record runs holds.
CREATE FUNCTION historical_db.entity_key_v1(record jsonb) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$ SELECT sha256(convert_to(record::text, 'UTF8')) $fn$;
