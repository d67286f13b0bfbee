"""SHVYA engage: AI replies, summaries and follow-up texts through an OpenAI-compatible API."""
