"""SHVYA ingest: the HTTP edge. Webhooks in, normalise, persist, publish jobs; the admin API."""
