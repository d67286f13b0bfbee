"""SHVYA scheduler: durable timers for deferred sends, sequences, follow-ups and reminders."""
