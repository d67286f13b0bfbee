-- POST /inbound-message with a distinct lead per request (so every request writes a new lead,
-- message, job and event), the same body shape the minimal handler gets.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local counter = 0
local thread_id = 0

setup = function(thread)
  thread:set("tid", thread_id)
  thread_id = thread_id + 1
end

request = function()
  counter = counter + 1
  local body = string.format(
    '{"phone_number":"+1202%03d%04d","contact_name":"Bench %d","message_text":"hello %d","channel":"log"}',
    tid or 0, counter % 10000, counter, counter)
  return wrk.format(nil, "/inbound-message", nil, body)
end
