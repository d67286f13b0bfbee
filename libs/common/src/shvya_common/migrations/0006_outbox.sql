-- The job bus as a transactional outbox: a job or send row is committed first and published to
-- JetStream after COMMIT. Each row carries what the relay and the reconciler need to republish
-- it, and what fences its state changes to the run that owns it.

-- generation:   bumped whenever the row goes back on the queue (timer, replay, reconciler);
--               "<id>:<generation>" is the message's Nats-Msg-Id.
-- published_at: when JetStream confirmed the publish of the current generation; NULL means the
--               relay must (re)publish it.
-- lease_until:  a live run owns the row until then (renewed by the worker's heartbeat); a
--               redelivery before that waits instead of running the handler a second time.
ALTER TABLE jobs
    ADD COLUMN generation   integer NOT NULL DEFAULT 0,
    ADD COLUMN published_at timestamptz,
    ADD COLUMN lease_until  timestamptz,
    ADD COLUMN claimed_by   text;
ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_check CHECK (status IN
    ('queued', 'scheduled', 'processing', 'completed', 'failed', 'dlq', 'orphaned'));
-- Rows written by the earlier bus were published inside their transaction.
UPDATE jobs SET published_at = updated_at;
CREATE INDEX jobs_unpublished ON jobs (updated_at) WHERE published_at IS NULL AND status = 'queued';

ALTER TABLE messages
    ADD COLUMN generation   integer NOT NULL DEFAULT 0,
    ADD COLUMN published_at timestamptz,
    ADD COLUMN lease_until  timestamptz,
    ADD COLUMN replays      integer NOT NULL DEFAULT 0,
    -- The dispatch.send request, so the relay, the reconciler and replay can rebuild it.
    ADD COLUMN send_params  jsonb;
UPDATE messages SET published_at = updated_at WHERE direction = 'outbound';
CREATE INDEX messages_unpublished ON messages (updated_at)
    WHERE direction = 'outbound' AND published_at IS NULL AND status = 'queued';

-- A timer that cannot fire (an unknown task, bad parameters) is set aside with its error instead
-- of failing every tick; 'resume' timers now name their row instead of carrying its message.
ALTER TABLE timers DROP CONSTRAINT timers_status_check;
ALTER TABLE timers ADD CONSTRAINT timers_status_check
    CHECK (status IN ('pending', 'fired', 'cancelled', 'failed'));
ALTER TABLE timers
    ADD COLUMN ledger    text CHECK (ledger IN ('jobs', 'messages')),
    ADD COLUMN target_id uuid,
    ADD COLUMN last_error text;
ALTER TABLE timers DROP CONSTRAINT timers_check;
ALTER TABLE timers ADD CONSTRAINT timers_check CHECK (
    (kind = 'resume' AND (envelope IS NOT NULL OR target_id IS NOT NULL))
    OR (kind = 'enqueue' AND task_name IS NOT NULL));

-- Ingest files a message naming its ai.engage job, then the bus inserts the job, in one
-- transaction: the reference is checked at COMMIT.
ALTER TABLE messages DROP CONSTRAINT messages_job_id_fkey;
ALTER TABLE messages ADD CONSTRAINT messages_job_id_fkey FOREIGN KEY (job_id)
    REFERENCES jobs(id) ON DELETE SET NULL DEFERRABLE INITIALLY DEFERRED;
