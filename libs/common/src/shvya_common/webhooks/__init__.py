"""Outbound webhooks and reminders, the parts every service shares: the SSRF guard's address
policy (`netguard`), signing secrets (`keys`) and the SQL of endpoints, deliveries, attempts and
reminders (`repository`). Ingest's API writes endpoints and reminders, the scheduler fans events
out to deliveries, dispatch delivers them (`shvya_dispatch.webhooks`)."""
