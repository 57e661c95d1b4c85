-- The halfvec HNSW graphs of metaspace's vectors, version 4 (revision 0019): the joint graph as in
-- vector_indexes_v2.sql, and the branch graphs over the distinct branch vectors (historical_db.branch_entities)
-- instead of one copy per run; over vector::halfvec(384), an expression index on the stored float32 column.
-- The search functions walk them with the query cast to match and return float32 distances.
CREATE INDEX IF NOT EXISTS joint_embeddings_halfvec_hnsw
    ON historical_db.joint_embeddings USING hnsw ((vector::halfvec(384)) halfvec_l2_ops)
    WITH (m = 16, ef_construction = 64);
CREATE INDEX IF NOT EXISTS branch_entities_config_halfvec_hnsw
    ON historical_db.branch_entities USING hnsw ((vector::halfvec(384)) halfvec_l2_ops)
    WITH (m = 16, ef_construction = 64) WHERE branch = 'config';
CREATE INDEX IF NOT EXISTS branch_entities_env_halfvec_hnsw
    ON historical_db.branch_entities USING hnsw ((vector::halfvec(384)) halfvec_l2_ops)
    WITH (m = 16, ef_construction = 64) WHERE branch = 'env';
CREATE INDEX IF NOT EXISTS branch_entities_outcome_halfvec_hnsw
    ON historical_db.branch_entities USING hnsw ((vector::halfvec(384)) halfvec_l2_ops)
    WITH (m = 16, ef_construction = 64) WHERE branch = 'outcome';
