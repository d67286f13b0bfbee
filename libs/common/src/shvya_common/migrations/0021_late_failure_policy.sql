-- A WhatsApp Cloud 'failed' status that beat dispatch's record of its wamid is acted on like one
-- that came after (issue 10). The trigger that applies a pending status when the wamid arrives
-- (migration 0003) now also marks such a failure due for the status policy; ingest's reconciler
-- (shvya_ingest/late_failures.py) runs the policy on each marked row and clears the mark in the
-- same transaction, so a crash in between loses no decision and no decision is taken twice.
ALTER TABLE provider_statuses ADD COLUMN policy_due_at timestamptz;
CREATE INDEX provider_statuses_policy_due ON provider_statuses (policy_due_at)
    WHERE policy_due_at IS NOT NULL;

-- As in 0003, plus the mark. Only WhatsApp Cloud has a status policy, and, as for a failure of
-- a known message (shvya_ingest/statuses.py), not when the message was delivered or read
-- (before, or among the statuses applied here): the customer has it, and a resend or a
-- fallback template would reach them twice.
CREATE OR REPLACE FUNCTION apply_pending_statuses() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    pending record;
    failed_id uuid;
BEGIN
    PERFORM provider_id_lock(NEW.provider_message_id);
    FOR pending IN
        UPDATE provider_statuses SET message_id = NEW.id
        WHERE channel = NEW.channel AND provider_message_id = NEW.provider_message_id
          AND message_id IS NULL
        RETURNING id, status, status_at, errors, error_text, recipient
    LOOP
        IF delivery_rank(pending.status) > delivery_rank(NEW.delivery_status) THEN
            NEW.delivery_status := pending.status;
        END IF;
        IF pending.status = 'failed' THEN
            NEW.delivery_error := pending.error_text;
            failed_id := pending.id;
        ELSIF pending.status = 'delivered' THEN
            NEW.delivered_at := LEAST(NEW.delivered_at, pending.status_at);
        ELSIF pending.status = 'read' THEN
            -- A read message was delivered, even if that status never came.
            NEW.read_at := LEAST(NEW.read_at, pending.status_at);
            NEW.delivered_at := LEAST(NEW.delivered_at, pending.status_at);
        END IF;
        INSERT INTO events (company_id, lead_id, type, payload)
        VALUES (NEW.company_id, NEW.lead_id,
                CASE pending.status WHEN 'sent' THEN 'message.provider_sent'
                                    WHEN 'delivered' THEN 'message.delivered'
                                    WHEN 'read' THEN 'message.read'
                                    ELSE 'message.delivery_failed' END,
                jsonb_build_object('message_id', NEW.id, 'channel', NEW.channel,
                                   'provider_message_id', NEW.provider_message_id,
                                   'status', pending.status, 'status_at', pending.status_at,
                                   'errors', pending.errors, 'late_match', true));
    END LOOP;
    IF failed_id IS NOT NULL AND NEW.channel = 'whatsapp_cloud'
       AND delivery_rank(NEW.delivery_status) < delivery_rank('delivered') THEN
        UPDATE provider_statuses SET policy_due_at = now() WHERE id = failed_id;
    END IF;
    RETURN NEW;
END $$;
