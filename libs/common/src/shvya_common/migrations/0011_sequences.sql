-- Sequences: a company's ordered steps (send, wait, condition, move stage, end), the leads
-- enrolled in them, and the history of every step each enrolment ran. The original's
-- `sequences` and `sequence_steps` are extended, not replaced.

-- on_reply: what a reply from the lead does to its enrolments: stop them, or pause them until
-- the conversation has been quiet for resume_after_quiet_seconds. version counts edits.
-- An archived sequence takes no new enrolments and its running ones are stopped.
ALTER TABLE sequences
    ADD COLUMN description text,
    ADD COLUMN on_reply text NOT NULL DEFAULT 'stop' CHECK (on_reply IN ('stop', 'pause')),
    ADD COLUMN resume_after_quiet_seconds integer NOT NULL DEFAULT 86400
        CHECK (resume_after_quiet_seconds > 0),
    ADD COLUMN version integer NOT NULL DEFAULT 1,
    ADD COLUMN archived_at timestamptz,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
CREATE INDEX sequences_company ON sequences (company_id, created_at);

-- A step keeps its id and `key` across edits, and its `version` counts changes to it; a
-- removed step is kept (deleted_at) so history and enrolments can still name it. Only live
-- steps are unique by position and key, so positions are free to move.
-- Kind-specific fields without a column of their own (a wait's weekday and time, a
-- condition and its branches, a target stage, template parameters) live in `config`.
ALTER TABLE sequence_steps DROP CONSTRAINT sequence_steps_action_check;
ALTER TABLE sequence_steps ADD CONSTRAINT sequence_steps_action_check
    CHECK (action IN ('send', 'wait', 'condition', 'move_stage', 'end'));
ALTER TABLE sequence_steps DROP CONSTRAINT sequence_steps_sequence_id_position_key;
ALTER TABLE sequence_steps
    ADD COLUMN key text,
    ADD COLUMN channel text,
    ADD COLUMN config jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN version integer NOT NULL DEFAULT 1,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN deleted_at timestamptz;
UPDATE sequence_steps SET key = 'step-' || position WHERE key IS NULL;
ALTER TABLE sequence_steps ALTER COLUMN key SET NOT NULL;
CREATE UNIQUE INDEX sequence_steps_live_position ON sequence_steps (sequence_id, position)
    WHERE deleted_at IS NULL;
CREATE UNIQUE INDEX sequence_steps_live_key ON sequence_steps (sequence_id, key)
    WHERE deleted_at IS NULL;

-- One lead in one sequence. `run` counts the enrolment's scheduled runs: each sequence.step
-- job names the run it was scheduled for, and a job of an older run (the enrolment was paused,
-- stopped or moved on since) does nothing. current_step_id is the next step to run (NULL: the
-- end), due at next_run_at. Replies count from resumed_at, else enrolled_at.
CREATE TABLE sequence_enrolments (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    company_id       uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    sequence_id      uuid NOT NULL REFERENCES sequences(id) ON DELETE CASCADE,
    lead_id          uuid NOT NULL REFERENCES leads(id) ON DELETE CASCADE,
    status           text NOT NULL DEFAULT 'active'
                     CHECK (status IN ('active', 'paused', 'completed', 'stopped')),
    current_step_id  uuid REFERENCES sequence_steps(id) ON DELETE SET NULL,
    run              integer NOT NULL DEFAULT 0,
    next_run_at      timestamptz,
    source           text NOT NULL CHECK (source IN ('lead', 'list', 'filter')),
    stop_reason      text,
    enrolled_at      timestamptz NOT NULL DEFAULT now(),
    paused_at        timestamptz,
    resumed_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
-- A lead is in a given sequence at most once at a time; it may enrol again once finished.
CREATE UNIQUE INDEX sequence_enrolments_one_live ON sequence_enrolments (sequence_id, lead_id)
    WHERE status IN ('active', 'paused');
CREATE INDEX sequence_enrolments_lead_live ON sequence_enrolments (lead_id)
    WHERE status IN ('active', 'paused');
CREATE INDEX sequence_enrolments_sequence ON sequence_enrolments (sequence_id, status, enrolled_at);
CREATE INDEX sequence_enrolments_step ON sequence_enrolments (current_step_id)
    WHERE status IN ('active', 'paused');

-- What happened to an enrolment, in order: enrolled, each step run (with the step's version
-- at that moment, and the message a send step requested), paused, resumed, moved by an edit,
-- stopped, completed. A step runs at most once per run of its enrolment.
CREATE TABLE sequence_history (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    enrolment_id  uuid NOT NULL REFERENCES sequence_enrolments(id) ON DELETE CASCADE,
    run           integer NOT NULL,
    kind          text NOT NULL CHECK (kind IN
                  ('enrolled', 'step', 'paused', 'resumed', 'moved', 'stopped', 'completed')),
    step_id       uuid REFERENCES sequence_steps(id) ON DELETE SET NULL,
    step_key      text,
    step_version  integer,
    action        text,
    outcome       text,
    detail        jsonb NOT NULL DEFAULT '{}'::jsonb,
    message_id    uuid REFERENCES messages(id) ON DELETE SET NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sequence_history_enrolment ON sequence_history (enrolment_id, id);
CREATE UNIQUE INDEX sequence_history_one_step_run ON sequence_history (enrolment_id, run, step_id)
    WHERE kind = 'step';
CREATE INDEX sequence_history_message ON sequence_history (message_id) WHERE message_id IS NOT NULL;

-- The stop reactor cancels an enrolment's parked step by its job key.
CREATE INDEX timers_pending_key ON timers (idempotency_key) WHERE status = 'pending';
