-- The knowledge base: documents as uploaded (ai_kb_documents) and their chunks (ai_kb_docs), each
-- chunk with a typed pgvector embedding under an HNSW index beside a full-text GIN index.

CREATE TABLE ai_kb_documents (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id      uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    title           text NOT NULL,
    -- Where it came from: the URL it was fetched from, or the uploader's own label.
    source          text,
    format          text NOT NULL CHECK (format IN ('text', 'markdown', 'html')),
    -- The text that was chunked (HTML is stored as the text extracted from it).
    content         text NOT NULL,
    content_sha256  text NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ai_kb_documents_company ON ai_kb_documents (company_id, created_at);

-- Rows written before this migration become one-chunk documents of their own.
INSERT INTO ai_kb_documents (id, company_id, title, source, format, content, content_sha256,
                             metadata, created_at, updated_at)
SELECT id, company_id, title, source, 'text', content, encode(sha256(convert_to(content, 'UTF8')), 'hex'),
       metadata, created_at, updated_at
FROM ai_kb_docs;

ALTER TABLE ai_kb_docs
    ADD COLUMN doc_id uuid REFERENCES ai_kb_documents(id) ON DELETE CASCADE,
    ADD COLUMN chunk_index integer NOT NULL DEFAULT 0 CHECK (chunk_index >= 0),
    -- The heading path above the chunk ("Pricing > Annual plans"), part of what is searched.
    ADD COLUMN heading text,
    -- Which model made `embedding` ("openai:text-embedding-3-small@384", "local:all-MiniLM-L6-v2");
    -- vectors of different models are never compared. NULL while a chunk has no vector.
    ADD COLUMN embedding_model text,
    ADD COLUMN ts_config regconfig NOT NULL DEFAULT 'english';
UPDATE ai_kb_docs SET doc_id = id;
ALTER TABLE ai_kb_docs ALTER COLUMN doc_id SET NOT NULL;

-- A typed column: 384 dimensions fits all-MiniLM-L6-v2 and text-embedding-3-small at 384.
-- `shvya reembed` changes the size when EMBEDDINGS_DIMENSIONS changes. Vectors of another size
-- cannot be kept, so they are cleared (and re-made by `shvya reembed`).
UPDATE ai_kb_docs SET embedding = NULL WHERE embedding IS NOT NULL AND vector_dims(embedding) <> 384;
ALTER TABLE ai_kb_docs ALTER COLUMN embedding TYPE vector(384) USING embedding::vector(384);
UPDATE ai_kb_docs SET embedding_model = 'unknown' WHERE embedding IS NOT NULL;

-- Title weighs most, then the heading, then the text. The two-argument to_tsvector is immutable,
-- so each row is indexed in its own text-search configuration (KB_TEXT_SEARCH_CONFIG at upload).
ALTER TABLE ai_kb_docs ADD COLUMN tsv tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector(ts_config, coalesce(title, '')), 'A')
    || setweight(to_tsvector(ts_config, coalesce(heading, '')), 'B')
    || setweight(to_tsvector(ts_config, content), 'D')
) STORED;

CREATE INDEX ai_kb_docs_tsv ON ai_kb_docs USING gin (tsv);
CREATE INDEX ai_kb_docs_embedding_hnsw ON ai_kb_docs USING hnsw (embedding vector_cosine_ops);
CREATE INDEX ai_kb_docs_document ON ai_kb_docs (doc_id, chunk_index);
CREATE INDEX ai_kb_docs_company_model ON ai_kb_docs (company_id, embedding_model);
