-- POST /inbound-message from a different lead each request (wrk -t1: one counter), for ingest
-- measured with every service running: engage and dispatch then answer distinct conversations,
-- as in production, instead of all contending for one lead's row. Numbers run through
-- +1 415 300-0000 .. 999-9999, all valid.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  local number = 3000000 + (n % 7000000)
  local body = string.format(
    '{"phone_number":"+1415%07d","contact_name":"Bench","message_text":"hello, do you ship to Berlin?","channel":"log"}',
    number)
  return wrk.format(nil, nil, nil, body)
end
