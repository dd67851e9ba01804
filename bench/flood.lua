-- The minting flood of bench/flood.py: editor pages from one client address (X-Forwarded-For,
-- which the bench's sidecar believes from loopback). Every other request brings a PHPSESSID never
-- sent before (a new session: a new StorefrontUser, if the budget lets it be made), the rest a
-- made-up cookie (`junk=1`: a first visit, which costs no API call).
-- Answers are counted by status and how the page went out; done() prints them with wrk's summary
-- as one JSON line (prefixed BENCH-JSON), as wrk_report.lua does.
local threads = {}

setup = function(thread)
  thread:set("id", #threads)
  table.insert(threads, thread)
end

init = function(args)
  address = args[1] or "198.51.100.22"
  sent = 0
  answers = {}
end

request = function()
  sent = sent + 1
  local cookie = "junk=1"
  if sent % 2 == 1 then
    cookie = string.format("PHPSESSID=flood%02d%025d", id, sent)
  end
  return wrk.format(nil, nil, { ["Cookie"] = cookie, ["X-Forwarded-For"] = address })
end

-- X-CC-Sidecar when the sidecar set it (token-deferred: over budget), else what the page carries.
response = function(status, headers, body)
  local how = headers["X-CC-Sidecar"]
  if how == nil then
    if not string.find(body, 'id="cc-storefront-user"', 1, true) then
      how = "no element"
    elseif string.find(body, '"token":null', 1, true) then
      how = "guest id, no token"
    else
      how = "token"
    end
  end
  local key = status .. " " .. how
  answers[key] = (answers[key] or 0) + 1
end

done = function(summary, latency, requests)
  local merged = {}
  for _, thread in ipairs(threads) do
    for key, count in pairs(thread:get("answers")) do
      merged[key] = (merged[key] or 0) + count
    end
  end
  local parts = {}
  for key, count in pairs(merged) do
    table.insert(parts, string.format('"%s":%d', key, count))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH-JSON {"requests":%.0f,"duration_us":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
    '"latency_us":{"p50":%.0f,"p99":%.0f},"answers":{%s}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(parts, ",")))
end
