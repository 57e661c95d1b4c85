-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- The encoders inside PostgreSQL (revision 0011): the vector the Python encoders (metaspace/encoders/) give
-- for a record and a registered encoder version, computed from that version's fitted state as stored in
-- historical_db.encoder_branches, encoder_features and encoder_matrices (metaspace/store/sql_encoders.py).
-- docs/encoders.md says where float32 arithmetic makes the two differ in the last bits, and why.
-- A record the Python path refuses is refused here with the same field (SQLSTATE 22023).

-- The label of a category value that is not a string, true/false or an object: Python's repr() of the value
-- as json.loads gives it (an integer's digits, a float's shortest form, a list's repr).
CREATE FUNCTION historical_db.encoder_label_v1(value jsonb) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    n numeric;
    t text;
    e integer;
BEGIN
    CASE jsonb_typeof(value)
    WHEN 'string' THEN
        t := value #>> '{}';
        IF strpos(t, '''') > 0 AND strpos(t, '"') = 0 THEN
            RETURN '"' || replace(replace(replace(replace(t, E'\\', E'\\\\'), E'\n', E'\\n'), E'\r', E'\\r'),
                                  E'\t', E'\\t') || '"';
        END IF;
        RETURN '''' || replace(replace(replace(replace(replace(t, E'\\', E'\\\\'), E'\n', E'\\n'), E'\r', E'\\r'),
                                       E'\t', E'\\t'), '''', E'\\''') || '''';
    WHEN 'null' THEN RETURN 'None';
    WHEN 'boolean' THEN RETURN CASE WHEN value::boolean THEN 'True' ELSE 'False' END;
    WHEN 'array' THEN
        RETURN '[' || coalesce((SELECT string_agg(historical_db.encoder_label_v1(v), ', ' ORDER BY i)
                                FROM jsonb_array_elements(value) WITH ORDINALITY a (v, i)), '') || ']';
    WHEN 'object' THEN
        RETURN '{' || coalesce((SELECT string_agg(historical_db.encoder_label_v1(to_jsonb(k)) || ': '
                                                  || historical_db.encoder_label_v1(v), ', ' ORDER BY k)
                                FROM jsonb_each(value) o (k, v)), '') || '}';
    ELSE
        n := value::numeric;
        IF scale(n) = 0 THEN  -- an integer (json.loads gives int): its digits; past 4300 digits repr() refuses
            t := n::text;
            RETURN CASE WHEN length(t) > 4300 THEN '<int>' ELSE t END;
        END IF;
        IF abs(n) >= 179769313486231580793728971405303415079934132710037826936173778980444968292764750946649017977587207096330286416692887910946555547851940402630657488671505820681908902000708383676273854845817711531764475730270069855571366959622842914819860834936475292719074168444365510704342711559699508093042880177904174497792 THEN
            RETURN CASE WHEN n > 0 THEN 'inf' ELSE '-inf' END;
        END IF;
        t := (CASE WHEN abs(n) <= 2.470328229206232720882843964341106861825E-324 THEN 0 ELSE n::float8 END)::text;
        IF strpos(t, 'e') > 0 THEN  -- PostgreSQL writes exponents from 15, Python from 16
            e := split_part(t, 'e', 2)::integer;
            IF e BETWEEN -4 AND 15 THEN
                t := t::numeric::text;
            ELSE
                RETURN t;
            END IF;
        END IF;
        RETURN CASE WHEN strpos(t, '.') > 0 THEN t ELSE t || '.0' END;
    END CASE;
END
$fn$;

-- The features of one branch object for a version (the Python BranchEncoder._features), or the first field
-- that cannot be encoded and why (then x is NULL).
CREATE FUNCTION historical_db.encoder_features_v1(
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
            SELECT CASE p.transform
                       WHEN 'log' THEN ln(greatest(p.num, 1e-300))
                       WHEN 'signed_log' THEN sign(p.num) * CASE
                           WHEN abs(p.num) > 1e300 * least(p.shift, 1.0) THEN ln(abs(p.num)) - ln(p.shift)
                           WHEN 1.0 + abs(p.num) / p.shift = 1.0 THEN abs(p.num) / p.shift
                           ELSE ln(1.0 + abs(p.num) / p.shift) * (abs(p.num) / p.shift)
                                / ((1.0 + abs(p.num) / p.shift) - 1.0) END
                       WHEN 'asin_sqrt' THEN asin(sqrt(least(greatest(p.num, 0.0), 1.0)))
                       WHEN 'sqrt' THEN sqrt(least(greatest(p.num, 0.0), 1.0))
                       ELSE p.num END AS v
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

-- y = W x + b for a stored matrix (one pgvector row per output): the products run in pgvector, in float32,
-- on x scaled by a power of two (exact) so that no value of x overflows or vanishes in float32.
CREATE FUNCTION historical_db.encoder_matvec_v1(of_version integer, of_matrix text, x double precision[])
RETURNS double precision[]
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    top double precision := (SELECT max(abs(v)) FROM unnest(x) v);
    factor double precision := 1.0;
    q vector;
BEGIN
    IF top > 1e30 OR (top > 1e-280 AND top < 1e-30) THEN
        factor := 2.0 ^ floor(ln(top) / ln(2.0));
    END IF;
    q := (SELECT array_agg(CASE WHEN abs(v) < factor * 1e-290 THEN 0.0 ELSE v / factor END ORDER BY i)
          FROM unnest(x) WITH ORDINALITY u (v, i))::vector;
    RETURN (SELECT array_agg(CASE WHEN abs(m.weights <#> q) < 1e-30 AND factor < 1 THEN 0.0
                                  WHEN abs(m.weights <#> q) < 1e300 / factor THEN factor * -(m.weights <#> q)
                                  ELSE -sign(m.weights <#> q) * 'Infinity'::float8 END + m.bias ORDER BY m.row)
            FROM historical_db.encoder_matrices m WHERE m.version = of_version AND m.matrix = of_matrix);
END
$fn$;

-- The field of the largest feature of a branch's features (Python BranchEncoder.blame).
CREATE FUNCTION historical_db.encoder_blame_v1(of_version integer, of_branch text, x double precision[])
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
    SELECT of_branch || '.' || (
        SELECT f.field FROM historical_db.encoder_features f
        WHERE f.version = of_version AND f.branch = of_branch
          AND f.first_column <= (SELECT u.i - 1 FROM unnest(x) WITH ORDINALITY u (v, i)
                                 ORDER BY CASE WHEN v = 'NaN' THEN 'Infinity' ELSE abs(v) END DESC, u.i LIMIT 1)
        ORDER BY f.first_column DESC LIMIT 1)
$fn$;

-- One branch of a record: its features x, coordinates (x, or its principal components) and branch vector
-- (before the float32 rounding), or the field that cannot be encoded and why.
CREATE FUNCTION historical_db.encoder_branch_v1(
    of_version integer, of_branch text, branch_value jsonb,
    OUT x double precision[], OUT coords double precision[], OUT z double precision[], OUT field text,
    OUT reason text
)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    b historical_db.encoder_branches;
BEGIN
    SELECT * INTO b FROM historical_db.encoder_branches e WHERE e.version = of_version AND e.branch = of_branch;
    SELECT f.x, f.field, f.reason INTO x, field, reason
    FROM historical_db.encoder_features_v1(of_version, of_branch, branch_value) f;
    IF field IS NOT NULL THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(x) v WHERE v IN ('Infinity', '-Infinity', 'NaN')) THEN
        field := historical_db.encoder_blame_v1(of_version, of_branch, x);
        reason := 'the value is too large to encode: its vector would not be finite';
        RETURN;
    END IF;
    coords := CASE WHEN b.n_features > 384 THEN historical_db.encoder_matvec_v1(of_version, of_branch || '.pca', x)
                   ELSE x END;
    z := CASE WHEN b.n_coords > 0 THEN historical_db.encoder_matvec_v1(of_version, of_branch || '.embed', coords)
              ELSE array_fill(0.0::float8, ARRAY[384]) END;
    IF EXISTS (SELECT 1 FROM unnest(z) v WHERE NOT abs(v) < 3.4028235677973366e38) THEN
        field := historical_db.encoder_blame_v1(of_version, of_branch, x);
        reason := 'the value is too large to encode: its vector would not be finite';
    END IF;
END
$fn$;

-- The joint vector (before the float32 rounding) of the three branches' coordinates, or the field to blame
-- when it would not be finite (Python MetaSpace._refuse_non_finite_joint).
CREATE FUNCTION historical_db.encoder_joint_v1(
    of_version integer, c_config double precision[], c_env double precision[], c_outcome double precision[],
    x_config double precision[], x_env double precision[], x_outcome double precision[],
    OUT z double precision[], OUT field text
)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    u double precision[] := coalesce(c_config, '{}') || coalesce(c_env, '{}') || coalesce(c_outcome, '{}');
    worst text;
BEGIN
    z := CASE WHEN cardinality(u) > 0 THEN historical_db.encoder_matvec_v1(of_version, 'joint', u)
              ELSE array_fill(0.0::float8, ARRAY[384]) END;
    IF EXISTS (SELECT 1 FROM unnest(z) v WHERE NOT abs(v) < 3.4028235677973366e38) THEN
        SELECT e.branch INTO worst
        FROM historical_db.encoder_branches e
        CROSS JOIN LATERAL (
            SELECT max(CASE WHEN v = 'NaN' THEN 'Infinity' ELSE abs(v * e.scale) END) AS size
            FROM unnest(CASE e.branch WHEN 'config' THEN c_config WHEN 'env' THEN c_env ELSE c_outcome END) v) s
        WHERE e.version = of_version
        ORDER BY coalesce(s.size, 0) DESC, array_position(ARRAY['config', 'env', 'outcome'], e.branch) LIMIT 1;
        field := historical_db.encoder_blame_v1(of_version, worst,
            CASE worst WHEN 'config' THEN x_config WHEN 'env' THEN x_env ELSE x_outcome END);
    END IF;
END
$fn$;

-- The encoder version to use: the active one when NULL; an unknown version, or one without a state the
-- SQL encoders can read, is an error that says so.
CREATE FUNCTION historical_db.encoder_version_v1(encoder_version integer) RETURNS integer
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
BEGIN
    IF encoder_version IS NULL THEN
        encoder_version := historical_db.active_encoder_version_v1();
    END IF;
    IF NOT EXISTS (SELECT 1 FROM historical_db.encoder_versions v WHERE v.version = encoder_version
                   AND v.model_id = 'joint-meta-config-env-v1') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'encoder version ' || encoder_version || ' is not registered',
            HINT = 'SELECT version, is_active FROM historical_db.encoder_versions lists the registered versions.';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM historical_db.encoder_branches b WHERE b.version = encoder_version) THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'encoder version ' || encoder_version || ' cannot be encoded in SQL: its state is of another '
                      || 'format, or a branch has more features than a pgvector row holds',
            HINT = 'Encode with the metaspace Python package, or fit a new version: metaspace embed-runs --rebuild';
    END IF;
    RETURN encoder_version;
END
$fn$;

-- The vector of a JSON record in a space (joint, config, env or outcome) with an encoder version (the
-- active one by default): the vector `metaspace search --record/--env/--config` searches with.
-- In a branch space the record may be a whole run record or the bare branch object; a joint record that
-- lacks a branch gets that branch's imputation from the fitted state (the mean of the fit sample), never
-- anything dated later. Errors (SQLSTATE 22023) name the field, as the command line does.
CREATE FUNCTION historical_db.encode_v1(space text, record jsonb, encoder_version integer DEFAULT NULL)
RETURNS vector(384)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    v integer;
    given jsonb;
    name text;
    part record;
    cc double precision[];
    xx double precision[];
    c1 double precision[];
    c2 double precision[];
    c3 double precision[];
    x1 double precision[];
    x2 double precision[];
    x3 double precision[];
    joint record;
BEGIN
    IF space IS NULL OR space NOT IN ('joint', 'config', 'env', 'outcome') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'unknown space ' || coalesce(quote_literal(space), 'NULL')
                      || ': use joint, config, env or outcome';
    END IF;
    IF record IS NULL OR jsonb_typeof(record) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'the record must be a JSON object, got ' || coalesce(jsonb_typeof(record), 'NULL');
    END IF;
    v := historical_db.encoder_version_v1(encoder_version);
    IF space <> 'joint' THEN
        -- A bare branch object is that branch; a run record (run_id, as_of_date or the branch as an object)
        -- gives its branch (metaspace.queries._as_record).
        IF record ? 'as_of_date' OR record ? 'run_id' OR jsonb_typeof(record -> space) = 'object' THEN
            given := record -> space;
        ELSE
            given := record;
        END IF;
        IF given IS NULL OR jsonb_typeof(given) <> 'object' OR given = '{}' THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = 'encoding in the ' || space || ' space needs the record''s ''' || space
                          || ''' object, which is missing or empty';
        END IF;
        SELECT * INTO part FROM historical_db.encoder_branch_v1(v, space, given);
        IF part.field IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = 'field ' || quote_literal(part.field) || ': ' || part.reason;
        END IF;
        RETURN part.z::vector(384);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM unnest(ARRAY['config', 'env', 'outcome']) b
                   WHERE jsonb_typeof(record -> b) = 'object' AND record -> b <> '{}') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'the record has none of config, env, outcome to encode';
    END IF;
    FOREACH name IN ARRAY ARRAY['config', 'env', 'outcome'] LOOP
        IF jsonb_typeof(record -> name) = 'object' AND record -> name <> '{}' THEN
            SELECT * INTO part FROM historical_db.encoder_branch_v1(v, name, record -> name);
            IF part.field IS NOT NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                    MESSAGE = 'field ' || quote_literal(part.field) || ': ' || part.reason;
            END IF;
            cc := part.coords;
            xx := part.x;
        ELSE  -- imputed: the mean coordinates of the fit sample (older states: those of an empty branch)
            cc := coalesce(
                (SELECT b.imputation FROM historical_db.encoder_branches b WHERE b.version = v AND b.branch = name),
                (SELECT p.coords FROM historical_db.encoder_branch_v1(v, name, '{}') p));
            xx := NULL;
        END IF;
        CASE name
            WHEN 'config' THEN c1 := cc; x1 := xx;
            WHEN 'env' THEN c2 := cc; x2 := xx;
            ELSE c3 := cc; x3 := xx;
        END CASE;
    END LOOP;
    SELECT * INTO joint FROM historical_db.encoder_joint_v1(v, c1, c2, c3, x1, x2, x3);
    IF joint.field IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'field ' || quote_literal(joint.field)
                      || ': the value is too large to encode: its joint vector would not be finite';
    END IF;
    RETURN joint.z::vector(384);
END
$fn$;

-- The four vectors of a stored run as `metaspace embed-runs` writes them (MetaSpace.encode: a missing
-- branch is an empty one, never imputed), or the field of the first branch that cannot be encoded and why.
CREATE FUNCTION historical_db.encode_run_v1(
    of_version integer, config jsonb, env jsonb, outcome jsonb,
    OUT joint vector, OUT config_vector vector, OUT env_vector vector, OUT outcome_vector vector,
    OUT field text, OUT reason text
)
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    c record;
    e record;
    o record;
    j record;
BEGIN
    SELECT * INTO c FROM historical_db.encoder_branch_v1(of_version, 'config', config);
    SELECT * INTO e FROM historical_db.encoder_branch_v1(of_version, 'env', env);
    SELECT * INTO o FROM historical_db.encoder_branch_v1(of_version, 'outcome', outcome);
    IF coalesce(c.field, e.field, o.field) IS NOT NULL THEN
        field := coalesce(c.field, e.field, o.field);
        reason := CASE WHEN c.field IS NOT NULL THEN c.reason WHEN e.field IS NOT NULL THEN e.reason ELSE o.reason END;
        RETURN;
    END IF;
    SELECT * INTO j FROM historical_db.encoder_joint_v1(of_version, c.coords, e.coords, o.coords, c.x, e.x, o.x);
    IF j.field IS NOT NULL THEN
        field := j.field;
        reason := 'the value is too large to encode: its joint vector would not be finite';
        RETURN;
    END IF;
    joint := j.z::vector(384);
    config_vector := c.z::vector(384);
    env_vector := e.z::vector(384);
    outcome_vector := o.z::vector(384);
END
$fn$;
