-- Inbound real channels: routing provider addresses to companies, delivery statuses from
-- providers (WhatsApp Cloud webhooks), de-duplicated and never moving backwards.

-- Which company a provider address belongs to: a WhatsApp Cloud phone_number_id, or an inbound
-- email mailbox. Unknown addresses land in the default company.
CREATE TABLE inbound_routes (
    channel     text NOT NULL,
    address     text NOT NULL,
    company_id  uuid NOT NULL REFERENCES companies(id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, address)
);

-- An outbound message's delivery as the provider reports it. Kept apart from `status`, which is
-- dispatch's send ledger (queued, sending, sent, ...).
ALTER TABLE messages
    ADD COLUMN delivery_status text CHECK (delivery_status IN ('sent', 'delivered', 'read', 'failed')),
    ADD COLUMN delivery_error  text,
    ADD COLUMN delivered_at    timestamptz,
    ADD COLUMN read_at         timestamptz;
-- Statuses name the provider's id only (a wamid is globally unique), not the company.
CREATE INDEX messages_outbound_provider ON messages (provider_message_id)
    WHERE direction = 'outbound' AND provider_message_id IS NOT NULL;

-- Every status a provider reported, once: providers retry for days and send duplicates.
-- message_id stays NULL while no outbound message carries the provider id yet (the webhook can
-- beat dispatch's commit of the wamid); the trigger below applies it when the id arrives.
CREATE TABLE provider_statuses (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    channel              text NOT NULL,
    provider_message_id  text NOT NULL,
    status               text NOT NULL CHECK (status IN ('sent', 'delivered', 'read', 'failed')),
    status_at            timestamptz NOT NULL,
    recipient            text,
    errors               jsonb NOT NULL DEFAULT '[]'::jsonb,
    error_text           text,
    -- Deferred: the insert trigger links statuses before its message row exists.
    message_id           uuid REFERENCES messages(id) ON DELETE CASCADE
                         DEFERRABLE INITIALLY DEFERRED,
    received_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (channel, provider_message_id, status)
);
CREATE INDEX provider_statuses_pending ON provider_statuses (channel, provider_message_id)
    WHERE message_id IS NULL;

-- Order of delivery states; a status is applied only when it ranks above the current one.
-- failed outranks sent (sent, then failed) but not delivered: a message some device received
-- stays delivered.
CREATE FUNCTION delivery_rank(status text) RETURNS integer
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT CASE status WHEN 'sent' THEN 1 WHEN 'failed' THEN 2
                             WHEN 'delivered' THEN 3 WHEN 'read' THEN 4 ELSE 0 END $$;

-- The lock that serialises "file a status for a provider id" with "give a message that provider
-- id", so a status never falls between the two. Ingest takes the same lock (same key).
CREATE FUNCTION provider_id_lock(provider_message_id text) RETURNS void
    LANGUAGE sql VOLATILE
    AS $$ SELECT pg_advisory_xact_lock(1397249585, hashtext(provider_message_id)) $$;

CREATE FUNCTION apply_pending_statuses() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    pending record;
BEGIN
    PERFORM provider_id_lock(NEW.provider_message_id);
    FOR pending IN
        UPDATE provider_statuses SET message_id = NEW.id
        WHERE channel = NEW.channel AND provider_message_id = NEW.provider_message_id
          AND message_id IS NULL
        RETURNING status, status_at, errors, error_text, recipient
    LOOP
        IF delivery_rank(pending.status) > delivery_rank(NEW.delivery_status) THEN
            NEW.delivery_status := pending.status;
        END IF;
        IF pending.status = 'failed' THEN
            NEW.delivery_error := pending.error_text;
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
    RETURN NEW;
END $$;

CREATE TRIGGER messages_pending_statuses_insert
    BEFORE INSERT ON messages FOR EACH ROW
    WHEN (NEW.direction = 'outbound' AND NEW.provider_message_id IS NOT NULL)
    EXECUTE FUNCTION apply_pending_statuses();
CREATE TRIGGER messages_pending_statuses_update
    BEFORE UPDATE OF provider_message_id ON messages FOR EACH ROW
    WHEN (NEW.direction = 'outbound' AND NEW.provider_message_id IS NOT NULL
          AND OLD.provider_message_id IS DISTINCT FROM NEW.provider_message_id)
    EXECUTE FUNCTION apply_pending_statuses();
