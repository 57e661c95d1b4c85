-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- metaspace's search functions, version 2 (revision 0009): version 1's searches, plus the encoder version
-- the query vector was made with. A client encodes a query with the version active then; if a rebuild has
-- switched versions since, searching the new version's vectors with it would compare points of two
-- different spaces, silently. Given the version, these functions refuse such a query (SQLSTATE 55000,
-- object_not_in_prerequisite_state) and the client encodes it again. Without it they behave as version 1.

-- The version to search: the active one, which must be the one the query was made with, if that is given.
CREATE FUNCTION historical_db.query_version_v2(encoder_version integer) RETURNS integer
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    active integer := historical_db.active_encoder_version_v1();
BEGIN
    IF encoder_version IS NOT NULL AND encoder_version <> active THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'the query was encoded with encoder version ' || encoder_version
                      || ', but version ' || active || ' is active now',
            HINT = 'Encode the query again with the active version.';
    END IF;
    RETURN active;
END
$fn$;

-- 1. The k nearest runs to a vector in a space, as of a date (never a run dated after it).
CREATE FUNCTION historical_db.search_runs_v2(
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
    RETURN QUERY SELECT * FROM historical_db.nearest_runs_v1(
        query, k, space, historical_db.query_version_v2(encoder_version), as_of, strategy_ids, config_ids,
        scope, exact);
END
$fn$;

-- 2. The k nearest runs to a stored run (the run itself excluded), in any space. The stored run's vector
--    is read in the same statement, so it is always of the version searched; encoder_version, if given,
--    must still be the active one (a client comparing answers across a switch learns of it).
CREATE FUNCTION historical_db.neighbours_v2(
    of_run text, k integer DEFAULT 10, space text DEFAULT 'joint', as_of date DEFAULT NULL,
    strategy_ids text[] DEFAULT NULL, config_ids text[] DEFAULT NULL, scope jsonb DEFAULT NULL,
    exact boolean DEFAULT false, encoder_version integer DEFAULT NULL
) RETURNS SETOF historical_db.run_match_v1
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    PERFORM historical_db.query_version_v2(encoder_version);
    RETURN QUERY SELECT * FROM historical_db.neighbours_v1(
        of_run, k, space, as_of, strategy_ids, config_ids, scope, exact);
END
$fn$;
