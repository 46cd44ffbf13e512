"""The seed apps' own schemas, as their migration guides give them: what `syncd config --from-app`
writes into a ``[[target.collections]]`` entry's ``create`` (the fixtures under
tests/fixtures/seeds/ hold the same text)."""

# qckstrt's pgvector provider's table and index (seed 000, "ChromaDB -> pgvector", Step 4), with
# the dimension of its VECTOR_DB_DIMENSIONS; tests/fixtures/seeds/qckstrt/vector_embeddings.sql
QCKSTRT_COLLECTION = "qckstrt-embeddings"
QCKSTRT_DDL = """CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE vector_embeddings (
  id VARCHAR(255) PRIMARY KEY,
  user_id VARCHAR(255) NOT NULL,
  document_id VARCHAR(255) NOT NULL,
  embedding vector({dim}) NOT NULL,
  content TEXT NOT NULL,
  created_at TIMESTAMP DEFAULT NOW()
);

CREATE INDEX idx_embedding_hnsw
  ON vector_embeddings
  USING hnsw (embedding vector_cosine_ops);
"""


# Signal Hub's schema (seed 003, "Step 2: Initialize Database Schema", "Create Schema"), verbatim;
# tests/fixtures/seeds/signal-hub/schema.sql. A Chroma item is one documents row and one embeddings row.
SIGNAL_HUB_COLLECTION = "signal-hub"
SIGNAL_HUB_COLUMNS = {"content": "document", "file_path": "metadata.file_path",
                      "chunk_index": "metadata.chunk_index", "start_line": "metadata.start_line",
                      "end_line": "metadata.end_line", "language": "metadata.language",
                      "model": "metadata.model"}
SIGNAL_HUB_DDL = """-- Enable pgvector extension
CREATE EXTENSION IF NOT EXISTS vector;

-- Create main tables
CREATE TABLE IF NOT EXISTS documents (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    file_path TEXT NOT NULL,
    content TEXT NOT NULL,
    chunk_index INTEGER NOT NULL,
    start_line INTEGER,
    end_line INTEGER,
    language VARCHAR(50),
    metadata JSONB,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(file_path, chunk_index)
);

-- Create embeddings table
CREATE TABLE IF NOT EXISTS embeddings (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    document_id UUID REFERENCES documents(id) ON DELETE CASCADE,
    embedding vector(1536),  -- OpenAI embedding dimension
    model VARCHAR(100),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

-- Create indexes for performance
CREATE INDEX idx_embeddings_vector ON embeddings USING ivfflat (embedding vector_cosine_ops);
CREATE INDEX idx_documents_file_path ON documents(file_path);
CREATE INDEX idx_documents_metadata ON documents USING GIN(metadata);

-- Create search function
CREATE OR REPLACE FUNCTION search_similar(
    query_embedding vector,
    match_count int DEFAULT 10,
    min_similarity float DEFAULT 0.7
)
RETURNS TABLE(
    document_id UUID,
    file_path TEXT,
    content TEXT,
    similarity float
)
AS $$
BEGIN
    RETURN QUERY
    SELECT\x20
        d.id,
        d.file_path,
        d.content,
        1 - (e.embedding <=> query_embedding) as similarity
    FROM embeddings e
    JOIN documents d ON e.document_id = d.id
    WHERE 1 - (e.embedding <=> query_embedding) > min_similarity
    ORDER BY e.embedding <=> query_embedding
    LIMIT match_count;
END;
$$ LANGUAGE plpgsql;
"""
