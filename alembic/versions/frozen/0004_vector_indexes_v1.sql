-- The HNSW indexes of metaspace's vectors. embed-runs drops and re-creates them around a large
-- backfill (faster than maintaining the graph row by row); the migration creates them.
-- m = 16, ef_construction = 64: pgvector's defaults; see README "Index parameters" for why.
CREATE INDEX IF NOT EXISTS joint_embeddings_vector_hnsw
    ON historical_db.joint_embeddings USING hnsw (vector vector_l2_ops) WITH (m = 16, ef_construction = 64);
CREATE INDEX IF NOT EXISTS branch_embeddings_config_hnsw
    ON historical_db.branch_embeddings USING hnsw (vector vector_l2_ops) WITH (m = 16, ef_construction = 64)
    WHERE branch = 'config';
CREATE INDEX IF NOT EXISTS branch_embeddings_env_hnsw
    ON historical_db.branch_embeddings USING hnsw (vector vector_l2_ops) WITH (m = 16, ef_construction = 64)
    WHERE branch = 'env';
CREATE INDEX IF NOT EXISTS branch_embeddings_outcome_hnsw
    ON historical_db.branch_embeddings USING hnsw (vector vector_l2_ops) WITH (m = 16, ef_construction = 64)
    WHERE branch = 'outcome';
