-- POST /inbound-message with a static body. wrk's per-request Lua hook (`request`) doubled the
-- *server's* CPU per request in our runs, which would distort both figures, so the body is
-- fixed: every ingest request still files a new message, job and event and publishes a job;
-- only the lead row is shared (a conservative case: its upsert contends on one row lock).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"phone_number":"+12025550142","contact_name":"Bench","message_text":"hello, do you ship to Berlin?","channel":"log"}'
