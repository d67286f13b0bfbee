-- POST /inbound-message with a static body, the same for the yardstick and ingest. Every ingest
-- request still files a new message, job and event and publishes a job; only the lead row is
-- shared (8 distinct leads over 8 wrk processes gave the same rate). Pass the URL *with* its
-- path: wrk sends a static body to the URL's path.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"phone_number":"+12025550142","contact_name":"Bench","message_text":"hello, do you ship to Berlin?","channel":"log"}'
