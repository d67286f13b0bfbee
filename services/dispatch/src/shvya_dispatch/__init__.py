"""SHVYA dispatch: per-channel policy and sending, exactly once per send request."""
