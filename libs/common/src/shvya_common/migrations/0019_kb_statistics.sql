-- Knowledge-base statistics kept by the writes, so a search reads a few rows instead of counting
-- the company's chunks: how many chunks each (text-search configuration, embedding model) has,
-- and each lexeme's document frequency (BM25's df). At 100,000 chunks the counts were two scans
-- of the company's rows per search (~50 ms each) and the df of a common word another ~20 ms.
--
-- Statement triggers with transition tables keep them: one upsert per statement, whatever the
-- number of rows (a 100,000-row load is one statement). A company's knowledge-base writes take
-- a transaction-scoped advisory lock first, so two uploads' upserts of the same lexemes never
-- deadlock; they wait for each other's commit instead (uploads embed before their transaction).

CREATE TABLE ai_kb_counts (
    company_id      uuid NOT NULL,
    ts_config       regconfig NOT NULL,
    -- the model of the chunks' vectors; '' for chunks without one
    embedding_model text NOT NULL,
    chunks          bigint NOT NULL,
    PRIMARY KEY (company_id, ts_config, embedding_model)
);

CREATE TABLE ai_kb_terms (
    company_id uuid NOT NULL,
    ts_config  regconfig NOT NULL,
    lexeme     text NOT NULL,
    df         bigint NOT NULL,
    PRIMARY KEY (company_id, ts_config, lexeme)
);

-- No foreign keys: deleting a company cascades to its chunks, whose trigger then brings the
-- company's counts to zero (and removes them) after the company row is gone.

CREATE FUNCTION ai_kb_statistics_add(
    companies uuid[], configs regconfig[], models text[], vectors tsvector[], signs int[]
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF companies IS NULL THEN
        RETURN;  -- the statement touched no row
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('ai_kb:' || c::text, 0))
    FROM (SELECT DISTINCT c FROM unnest(companies) AS c ORDER BY c) AS touched;

    INSERT INTO ai_kb_counts AS k (company_id, ts_config, embedding_model, chunks)
    SELECT company_id, ts_config, model, sum(sign)
    FROM unnest(companies, configs, models, signs) AS d(company_id, ts_config, model, sign)
    GROUP BY 1, 2, 3 HAVING sum(sign) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (company_id, ts_config, embedding_model)
        DO UPDATE SET chunks = k.chunks + EXCLUDED.chunks;

    INSERT INTO ai_kb_terms AS t (company_id, ts_config, lexeme, df)
    SELECT company_id, ts_config, lexeme, sum(sign)
    FROM unnest(companies, configs, vectors, signs) AS d(company_id, ts_config, tsv, sign),
         unnest(tsvector_to_array(tsv)) AS lexeme
    GROUP BY 1, 2, 3 HAVING sum(sign) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (company_id, ts_config, lexeme) DO UPDATE SET df = t.df + EXCLUDED.df;

    IF -1 = ANY(signs) THEN
        DELETE FROM ai_kb_counts WHERE company_id = ANY(companies) AND chunks <= 0;
        DELETE FROM ai_kb_terms WHERE company_id = ANY(companies) AND df <= 0;
    END IF;
END $$;

-- The model a chunk's statistics count it under: '' while it has no vector.
CREATE FUNCTION ai_kb_vector_model(embedding vector, embedding_model text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN embedding IS NULL THEN '' ELSE coalesce(embedding_model, '') END
$$;

-- Each branch names only the transition tables its event has (plpgsql plans a statement when it
-- first runs it, so the others are never looked up).
CREATE FUNCTION ai_kb_statistics_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM ai_kb_statistics_add(array_agg(company_id), array_agg(ts_config),
                                     array_agg(ai_kb_vector_model(embedding, embedding_model)),
                                     array_agg(tsv), array_agg(1))
        FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM ai_kb_statistics_add(array_agg(company_id), array_agg(ts_config),
                                     array_agg(ai_kb_vector_model(embedding, embedding_model)),
                                     array_agg(tsv), array_agg(-1))
        FROM old_rows;
    ELSE
        PERFORM ai_kb_statistics_add(array_agg(company_id), array_agg(ts_config),
                                     array_agg(ai_kb_vector_model(embedding, embedding_model)),
                                     array_agg(tsv), array_agg(sign))
        FROM (SELECT *, 1 AS sign FROM new_rows UNION ALL SELECT *, -1 FROM old_rows) AS r;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER ai_kb_docs_statistics_insert AFTER INSERT ON ai_kb_docs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ai_kb_statistics_trigger();
CREATE TRIGGER ai_kb_docs_statistics_update AFTER UPDATE ON ai_kb_docs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ai_kb_statistics_trigger();
CREATE TRIGGER ai_kb_docs_statistics_delete AFTER DELETE ON ai_kb_docs
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ai_kb_statistics_trigger();

-- What is already there.
INSERT INTO ai_kb_counts (company_id, ts_config, embedding_model, chunks)
SELECT company_id, ts_config, ai_kb_vector_model(embedding, embedding_model), count(*)
FROM ai_kb_docs GROUP BY 1, 2, 3;

INSERT INTO ai_kb_terms (company_id, ts_config, lexeme, df)
SELECT company_id, ts_config, lexeme, count(*)
FROM ai_kb_docs, unnest(tsvector_to_array(tsv)) AS lexeme GROUP BY 1, 2, 3;
