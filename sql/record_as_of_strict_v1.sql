-- (No percent signs in this file: it is also printed by `metaspace migrate --sql`.)
-- A record's as_of_date read strictly (revision 0018): record_as_of_v1 (sql/search_record_v1.sql) cut the text
-- to its first ten characters, so '2024-03-29garbage' was the 29th of March. Replaced in place (same
-- arguments; the same date for every value it read right): an ISO date, or an ISO date-time whose time part is
-- dropped; anything else is an error (22023) that names the value, as the import's reading of a record is
-- (metaspace/records.py, iso_date; tests/test_first_hour.py checks that the two agree).
CREATE OR REPLACE FUNCTION historical_db.record_as_of_v1(record jsonb, as_of date) RETURNS date
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET search_path FROM CURRENT
AS $fn$
DECLARE
    own date;
    text_value text;
BEGIN
    IF jsonb_typeof(record) = 'object' AND coalesce(record ->> 'as_of_date', '') <> '' THEN
        text_value := btrim(record ->> 'as_of_date');
        BEGIN
            IF text_value ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$' THEN
                own := text_value::date;
            ELSIF text_value ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ]' THEN
                own := text_value::timestamp::date;  -- the whole date-time must read, then its time is dropped
            ELSE
                RAISE invalid_datetime_format;
            END IF;
        EXCEPTION WHEN invalid_datetime_format OR datetime_field_overflow OR invalid_text_representation THEN
            RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
                MESSAGE = 'as_of_date ' || quote_literal(record ->> 'as_of_date')
                          || ' is not an ISO date (YYYY-MM-DD, or an ISO date-time)';
        END;
    END IF;
    RETURN CASE WHEN own IS NULL THEN as_of WHEN as_of IS NULL THEN own ELSE least(own, as_of) END;
END
$fn$;
