-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- The SQL encoder's transforms in one function that refuses a transform it does not know (revision 0017).
--
-- encoder_features_v1 (sql/encode_v1.sql) ended its transform CASE with ELSE the value itself, so a transform
-- added to the Python encoders alone (metaspace/encoders/branch.py, TRANSFORMS) would have become the
-- identity in SQL without a word, and every vector SQL computed for it would have been wrong. Revision 0017
-- replaces encoder_features_v1's body in place (same arguments, same answer for every transform it knows;
-- its downgrade restores encode_v1.sql's body): every caller (encode_v1, encode_run_v1, embed_pending_v2,
-- search_record_v2, suggest_for_env_v4 and v5) is then safe without a new version of each. No registered
-- state has a transform SQL does not know (Python refuses one at fit), so no vector changes.
-- tests/test_sql_encoders.py forces every transform of TRANSFORMS through both encoders.

-- One numeric feature's transform (branch.py, _apply); an unknown one raises 22023.
CREATE FUNCTION historical_db.encoder_transform_v1(transform text, num double precision, shift double precision)
RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    RETURN CASE transform
        WHEN 'identity' THEN num
        WHEN 'log' THEN ln(greatest(num, 1e-300))
        WHEN 'signed_log' THEN sign(num) * CASE
            WHEN abs(num) > 1e300 * least(shift, 1.0) THEN ln(abs(num)) - ln(shift)
            WHEN 1.0 + abs(num) / shift = 1.0 THEN abs(num) / shift
            ELSE ln(1.0 + abs(num) / shift) * (abs(num) / shift) / ((1.0 + abs(num) / shift) - 1.0) END
        WHEN 'asin_sqrt' THEN asin(sqrt(least(greatest(num, 0.0), 1.0)))
        WHEN 'sqrt' THEN sqrt(least(greatest(num, 0.0), 1.0))
        ELSE historical_db.encoder_unknown_transform_v1(transform)
    END;
END
$fn$;

CREATE FUNCTION historical_db.encoder_unknown_transform_v1(transform text) RETURNS double precision
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
        MESSAGE = 'the SQL encoder does not know the transform ' || coalesce(quote_literal(transform), 'NULL'),
        HINT = 'This encoder version was fitted by a metaspace whose encoders have a transform this database''s '
               'SQL encoder lacks: run metaspace migrate with that release, or encode in Python.';
END
$fn$;

-- The features of one branch object for a version (the Python BranchEncoder._features), or the first field
-- that cannot be encoded and why (then x is NULL).
CREATE OR REPLACE FUNCTION historical_db.encoder_features_v1(
    of_version integer, of_branch text, branch_value jsonb,
    OUT x double precision[], OUT field text, OUT reason text
)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    IF branch_value IS NULL OR jsonb_typeof(branch_value) = 'null' THEN
        branch_value := '{}';
    END IF;
    IF jsonb_typeof(branch_value) <> 'object' THEN
        field := of_branch;
        reason := 'expected an object, got ' || CASE jsonb_typeof(branch_value) WHEN 'array' THEN 'list'
            WHEN 'string' THEN 'str' WHEN 'boolean' THEN 'bool'
            ELSE CASE WHEN scale(branch_value::numeric) = 0 THEN 'int' ELSE 'float' END END;
        RETURN;
    END IF;
    WITH RECURSIVE leaves (key, value, depth) AS (
        SELECT e.key, e.value, 0 FROM jsonb_each(branch_value) e
        UNION ALL
        SELECT l.key || '.' || e.key, e.value, l.depth + 1
        FROM leaves l CROSS JOIN LATERAL jsonb_each(l.value) e
        WHERE jsonb_typeof(l.value) = 'object' AND l.depth < 100
    ), flat AS (
        SELECT DISTINCT ON (l.key) l.key, l.value FROM leaves l
        WHERE NOT (jsonb_typeof(l.value) = 'object' AND l.depth < 100)
        ORDER BY l.key, l.depth
    ), specs AS (
        SELECT f.*, b.clip,
               CASE WHEN f.kind = 'category' OR f.list_index IS NULL THEN l.value
                    WHEN jsonb_typeof(l.value) = 'array' THEN l.value -> f.list_index
                    WHEN f.list_index = 0 THEN l.value END AS item
        FROM historical_db.encoder_features f
        JOIN historical_db.encoder_branches b ON b.version = f.version AND b.branch = f.branch
        LEFT JOIN flat l ON l.key = f.key
        WHERE f.version = of_version AND f.branch = of_branch
    ), typed AS (
        SELECT s.*, jsonb_typeof(s.item) AS t,
               CASE WHEN jsonb_typeof(s.item) = 'number' THEN s.item::numeric END AS n
        FROM specs s
    ), parsed AS (
        SELECT t.*,
               CASE WHEN t.kind = 'category' THEN NULL
                    WHEN t.t = 'boolean' THEN CASE WHEN t.item::boolean THEN 1.0 ELSE 0.0 END::float8
                    WHEN t.t = 'number' THEN
                        CASE WHEN abs(t.n) >= 179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792
                             THEN NULL
                             WHEN abs(t.n) < 1e-300 THEN 0.0::float8  -- below any fitted statistic's resolution
                             ELSE t.n::float8 END
               END AS num,
               CASE WHEN t.kind = 'category' THEN NULL
                    WHEN t.t IN ('string', 'array', 'object') THEN
                        'expected ' || CASE WHEN t.kind = 'boolean' THEN 'true/false' ELSE 'a number' END || ', got '
                        || CASE t.t WHEN 'string' THEN 'the string ' || historical_db.encoder_label_v1(
                                                          to_jsonb(left(t.item #>> '{}', 40)))
                                    WHEN 'array' THEN 'a list' ELSE 'an object' END
                    WHEN t.t = 'number' AND scale(t.n) = 0 AND abs(t.n) >= 179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792
                    THEN CASE WHEN abs(t.n) >= 2::numeric ^ 1024
                              THEN 'an integer of ' || (floor((floor(log(2, abs(t.n))) + 1) * log(10, 2::numeric)) + 1)
                                   || ' digits'
                              ELSE 'int' END || ' is beyond the range of a float64 number'
               END AS problem,
               CASE WHEN t.kind <> 'category' OR t.item IS NULL OR t.t = 'null' THEN NULL
                    WHEN t.t = 'string' THEN t.item #>> '{}'
                    WHEN t.t = 'boolean' THEN t.item::text
                    WHEN t.t = 'object' THEN '<object>'
                    ELSE nullif(nullif(historical_db.encoder_label_v1(t.item), 'inf'), '-inf')
               END AS label
        FROM typed t
    ), valued AS (
        SELECT p.position, p.field AS spec_field, p.problem,
               CASE WHEN p.kind = 'category' THEN (
                        SELECT array_agg(CASE WHEN i = coalesce(
                                                  CASE WHEN p.label IS NULL THEN cardinality(p.categories) + 1
                                                       ELSE coalesce(array_position(p.categories, p.label) - 1,
                                                                     cardinality(p.categories)) END, -1)
                                              THEN 0.7071067811865475 * p.weight ELSE 0.0 END ORDER BY i)
                        FROM generate_series(0, cardinality(p.categories) + CASE WHEN p.has_missing THEN 1 ELSE 0 END)
                             i)
                    WHEN p.kind = 'boolean' THEN ARRAY[
                        CASE WHEN p.num IS NULL THEN p.mean * p.weight
                             WHEN abs(p.weight) <= 1 OR abs(p.num) <= 1.7976931348623157e308 / abs(p.weight)
                             THEN p.num * p.weight
                             ELSE sign(p.num) * sign(p.weight) * 'Infinity'::float8 END]
                    ELSE ARRAY[CASE WHEN p.num IS NULL THEN 0.0 ELSE greatest(-p.clip, least(p.clip, z.z)) END
                               * p.weight]
               END
               || CASE WHEN p.kind <> 'category' AND p.flag
                       THEN ARRAY[CASE WHEN p.num IS NULL THEN p.weight ELSE 0.0 * p.weight END] ELSE '{}' END
               AS vals
        FROM parsed p
        LEFT JOIN LATERAL (
            SELECT CASE WHEN p.kind = 'numeric' AND p.num IS NOT NULL  -- (a lateral is computed before its ON)
                        THEN historical_db.encoder_transform_v1(p.transform, p.num, p.shift) END AS v
        ) tr ON p.kind = 'numeric' AND p.num IS NOT NULL
        LEFT JOIN LATERAL (
            SELECT CASE WHEN (tr.v / 2 - p.center / 2) / p.clip > p.scale / 2 THEN p.clip
                        WHEN (tr.v / 2 - p.center / 2) / p.clip < -p.scale / 2 THEN -p.clip
                        ELSE ((tr.v / 2 - p.center / 2) / p.scale) * 2 END AS z
        ) z ON p.kind = 'numeric' AND p.num IS NOT NULL
    )
    SELECT (SELECT array_agg(v.val ORDER BY s.position, v.j)
            FROM valued s CROSS JOIN LATERAL unnest(s.vals) WITH ORDINALITY v (val, j)),
           (SELECT of_branch || '.' || s.spec_field FROM valued s WHERE s.problem IS NOT NULL ORDER BY s.position
            LIMIT 1),
           (SELECT s.problem FROM valued s WHERE s.problem IS NOT NULL ORDER BY s.position LIMIT 1)
    INTO x, field, reason;
    IF field IS NOT NULL THEN
        x := NULL;
    ELSE
        x := coalesce(x, '{}');
    END IF;
END
$fn$;

