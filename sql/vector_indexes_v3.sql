-- The float32 HNSW graphs of metaspace's vectors, version 3 (revision 0019): the joint graph as in
-- vector_indexes_v1.sql, and the branch graphs over the distinct branch vectors (historical_db.branch_entities,
-- one row per distinct config, env or outcome record) instead of one copy per run. embed-runs builds the ones
-- metaspace/store/graphs.py calls for (docs/graphs.md, "Which spaces have a graph").
-- m = 16, ef_construction = 64: pgvector's defaults.
CREATE INDEX IF NOT EXISTS joint_embeddings_vector_hnsw
    ON historical_db.joint_embeddings USING hnsw (vector vector_l2_ops) WITH (m = 16, ef_construction = 64);
CREATE INDEX IF NOT EXISTS branch_entities_config_hnsw
    ON historical_db.branch_entities USING hnsw (vector vector_l2_ops) WITH (m = 16, ef_construction = 64)
    WHERE branch = 'config';
CREATE INDEX IF NOT EXISTS branch_entities_env_hnsw
    ON historical_db.branch_entities USING hnsw (vector vector_l2_ops) WITH (m = 16, ef_construction = 64)
    WHERE branch = 'env';
CREATE INDEX IF NOT EXISTS branch_entities_outcome_hnsw
    ON historical_db.branch_entities USING hnsw (vector vector_l2_ops) WITH (m = 16, ef_construction = 64)
    WHERE branch = 'outcome';
