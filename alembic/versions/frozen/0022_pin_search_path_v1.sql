-- Functions created after this statement (in the same transaction) pin their search_path FROM CURRENT
-- to: pg_catalog, the schema the vector extension lives in (public, or wherever an administrator put
-- it), pg_temp. Their own objects they always name with their schema.
SELECT set_config('search_path', 'pg_catalog, ' || quote_ident(n.nspname) || ', pg_temp', true)
FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname = 'vector';
