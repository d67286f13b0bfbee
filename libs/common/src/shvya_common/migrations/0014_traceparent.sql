-- The trace context (W3C traceparent) a job or an outbound send was enqueued in, so that a
-- republish by the relay, the reconciler or a timer continues the trace of the request that
-- made the row (shvya_common.tracing). NULL when tracing is off.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS traceparent text;
ALTER TABLE messages ADD COLUMN IF NOT EXISTS traceparent text;
