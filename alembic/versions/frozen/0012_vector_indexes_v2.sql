-- The HNSW graphs of metaspace's vectors, version 2 (revision 0012): over vector::halfvec(384), an
-- expression index on the stored float32 column (the rows keep their float32 vectors). A halfvec graph is
-- 0.57x the size of a float32 one and builds in 0.85-0.93x the time, with recall@10 within 0.005 of it up
-- to ef_search 100 (100,000 runs, docs/benchmarks.md; 0.006 below at 400 in the joint space). The search functions from nearest_runs_v2 on walk it with
-- the query cast to match and return float32 distances. The plain ORDER BY vector <-> :q form cannot use
-- it: that form uses a vector_l2_ops graph (vector_indexes_v1.sql) where one exists, else scans exactly.
-- metaspace/store/graphs.py chooses which of these it builds (see README "Which spaces have a graph").
CREATE INDEX IF NOT EXISTS joint_embeddings_halfvec_hnsw
    ON historical_db.joint_embeddings USING hnsw ((vector::halfvec(384)) halfvec_l2_ops)
    WITH (m = 16, ef_construction = 64);
CREATE INDEX IF NOT EXISTS branch_embeddings_config_halfvec_hnsw
    ON historical_db.branch_embeddings USING hnsw ((vector::halfvec(384)) halfvec_l2_ops)
    WITH (m = 16, ef_construction = 64) WHERE branch = 'config';
CREATE INDEX IF NOT EXISTS branch_embeddings_env_halfvec_hnsw
    ON historical_db.branch_embeddings USING hnsw ((vector::halfvec(384)) halfvec_l2_ops)
    WITH (m = 16, ef_construction = 64) WHERE branch = 'env';
CREATE INDEX IF NOT EXISTS branch_embeddings_outcome_halfvec_hnsw
    ON historical_db.branch_embeddings USING hnsw ((vector::halfvec(384)) halfvec_l2_ops)
    WITH (m = 16, ef_construction = 64) WHERE branch = 'outcome';
