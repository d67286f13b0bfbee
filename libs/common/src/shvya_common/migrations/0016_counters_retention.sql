-- Counters, not counts, and hot tables that stay small (issue 14).
--
-- Queue statistics: every change of a job's status or an outbound send's status adds a delta
-- row (+1 for the new status, -1 for the old) in the same transaction, so
-- totals + deltas is always the true count at any snapshot. Inserting deltas never contends
-- (no shared counter row is updated by writers); the scheduler folds them into
-- `queue_counts` every second, so GET /queue/stats reads a few dozen rows, not the tables.
CREATE TABLE queue_counts (
    ledger  text NOT NULL CHECK (ledger IN ('jobs', 'messages')),
    status  text NOT NULL,
    n       bigint NOT NULL,
    PRIMARY KEY (ledger, status)
);

CREATE TABLE queue_count_deltas (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ledger  text NOT NULL,
    status  text NOT NULL,
    n       bigint NOT NULL
);

-- A status change of one row (row trigger, only when the status really moved).
CREATE FUNCTION count_status_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queue_count_deltas (ledger, status, n)
    VALUES (TG_ARGV[0], OLD.status, -1), (TG_ARGV[0], NEW.status, 1);
    RETURN NULL;
END $$;

-- Rows inserted or deleted by one statement, counted once per statement (ingest files a batch
-- of jobs in one INSERT; retention deletes thousands in one DELETE).
CREATE FUNCTION count_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queue_count_deltas (ledger, status, n)
    SELECT 'jobs', status, count(*) FROM added GROUP BY status;
    RETURN NULL;
END $$;

CREATE FUNCTION count_jobs_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queue_count_deltas (ledger, status, n)
    SELECT 'jobs', status, -count(*) FROM removed GROUP BY status;
    RETURN NULL;
END $$;

CREATE FUNCTION count_sends_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queue_count_deltas (ledger, status, n)
    SELECT 'messages', status, count(*) FROM added WHERE direction = 'outbound' GROUP BY status;
    RETURN NULL;
END $$;

CREATE FUNCTION count_sends_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO queue_count_deltas (ledger, status, n)
    SELECT 'messages', status, -count(*) FROM removed WHERE direction = 'outbound' GROUP BY status;
    RETURN NULL;
END $$;

CREATE FUNCTION count_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM queue_counts WHERE ledger = TG_ARGV[0];
    DELETE FROM queue_count_deltas WHERE ledger = TG_ARGV[0];
    RETURN NULL;
END $$;

-- The triggers first: CREATE TRIGGER locks out writers until COMMIT, so the initial counts
-- below see every row written before, and the triggers every row written after.
CREATE TRIGGER jobs_count_status AFTER UPDATE OF status ON jobs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION count_status_change('jobs');
CREATE TRIGGER jobs_count_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION count_jobs_inserted();
CREATE TRIGGER jobs_count_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION count_jobs_deleted();
CREATE TRIGGER jobs_count_truncate AFTER TRUNCATE ON jobs
    FOR EACH STATEMENT EXECUTE FUNCTION count_truncated('jobs');

CREATE TRIGGER messages_count_status AFTER UPDATE OF status ON messages
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.direction = 'outbound')
    EXECUTE FUNCTION count_status_change('messages');
CREATE TRIGGER messages_count_insert AFTER INSERT ON messages REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION count_sends_inserted();
CREATE TRIGGER messages_count_delete AFTER DELETE ON messages REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION count_sends_deleted();
CREATE TRIGGER messages_count_truncate AFTER TRUNCATE ON messages
    FOR EACH STATEMENT EXECUTE FUNCTION count_truncated('messages');

INSERT INTO queue_counts (ledger, status, n)
SELECT 'jobs', status, count(*) FROM jobs GROUP BY status;
INSERT INTO queue_counts (ledger, status, n)
SELECT 'messages', status, count(*) FROM messages WHERE direction = 'outbound' GROUP BY status;

-- Retention (the scheduler's `retention` pass, RETENTION_* settings): finished jobs and timers
-- are deleted after an age; events move to `events_archive`, partitioned by month, after
-- EVENTS_HOT_DAYS, and whole archive months are dropped after EVENTS_ARCHIVE_MONTHS.
CREATE INDEX timers_finished ON timers (coalesce(fired_at, created_at)) WHERE status <> 'pending';
CREATE INDEX events_created ON events (created_at);
-- An event with webhook deliveries stays in `events` (its deliveries reference it).
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

-- The same foreign keys as `events`: erasing a lead or a company erases its archived events too,
-- and merge_leads (which moves every reference to a lead) moves them.
CREATE TABLE events_archive (
    id          uuid NOT NULL,
    company_id  uuid REFERENCES companies(id) ON DELETE CASCADE,
    lead_id     uuid REFERENCES leads(id) ON DELETE CASCADE,
    type        text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL
) PARTITION BY RANGE (created_at);
CREATE INDEX events_archive_company ON events_archive (company_id, created_at, id);
CREATE INDEX events_archive_lead ON events_archive (lead_id, created_at);

-- Every event, hot or archived, for readers that page through history.
CREATE VIEW events_all AS
    SELECT id, company_id, lead_id, type, payload, created_at FROM events
    UNION ALL
    SELECT id, company_id, lead_id, type, payload, created_at FROM events_archive;
