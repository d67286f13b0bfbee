-- Engage's sweeps: quiet conversations to summarise and silent leads to bump. Both look leads
-- up by their last activity, and count a lead's recent follow-ups.
CREATE INDEX leads_last_activity ON leads ((greatest(last_inbound_at, last_outbound_at)))
    WHERE last_inbound_at IS NOT NULL;
CREATE INDEX leads_last_outbound ON leads (last_outbound_at)
    WHERE phone_e164 IS NOT NULL AND last_outbound_at IS NOT NULL;
CREATE INDEX messages_lead_followups ON messages (lead_id, created_at)
    WHERE direction = 'outbound' AND meta->>'purpose' = 'followup';
