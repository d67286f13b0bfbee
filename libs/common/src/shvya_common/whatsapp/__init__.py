"""What ingest and dispatch both need to know about WhatsApp Cloud: user identifiers, the one
table of Graph error codes, and template state (statuses, definitions, the fallback setting).

Services never import each other, so the pieces both sides act on live here, once.
"""
