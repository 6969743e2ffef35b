-- Cycles through pre-signed webhook bodies (a Lua table file made by bench/payloads.py).
--   BENCH_BODIES  path of the table file: { {signature, body}, ... }
--   BENCH_WRAP    "1": start again at the first body when all are sent (the baseline, W2)
--                 otherwise each body is sent once, then BENCH_MARKER is written and the
--                 thread stops, so every request is a new event; bench/ then ends wrk.
-- wrk's own Requests/sec divides by the full -d even when the thread stops early, so the
-- threads time their first request and last response with CLOCK_MONOTONIC and done() prints
-- one JSON line that bench/ reads.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local clock = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

local data = dofile(os.getenv("BENCH_BODIES"))
local wrap = os.getenv("BENCH_WRAP") == "1"
local marker = os.getenv("BENCH_MARKER")
local requests = nil
local index = 0
local stopped = false

first = nil
last = nil
responses = 0
not_ok = 0
sent = 0

local function build()
  requests = {}
  for i, item in ipairs(data) do
    requests[i] = wrk.format("POST", "/webhook", {
      ["Content-Type"] = "application/json",
      ["X-Hub-Signature-256"] = item[1],
    }, item[2])
  end
  data = nil
end

function request()
  if requests == nil then
    build()
  end
  if first == nil then
    first = now()
  end
  index = index + 1
  if index > #requests then
    if wrap then
      index = 1
    elseif not stopped then
      stopped = true
      if marker then
        local f = io.open(marker, "w")
        f:write("done\n")
        f:close()
      end
      wrk.thread:stop()
      index = #requests
    else
      index = #requests
    end
  end
  if not stopped then
    sent = sent + 1
  end
  return requests[index]
end

function response(status, headers, body)
  last = now()
  responses = responses + 1
  if status ~= 200 then
    not_ok = not_ok + 1
  end
end

function done(summary, latency, requests_stats)
  local t_first, t_last, n, bad, total_sent = nil, nil, 0, 0, 0
  for _, thread in ipairs(threads) do
    local f, l = thread:get("first"), thread:get("last")
    if f ~= nil and (t_first == nil or f < t_first) then t_first = f end
    if l ~= nil and (t_last == nil or l > t_last) then t_last = l end
    n = n + thread:get("responses")
    bad = bad + thread:get("not_ok")
    total_sent = total_sent + thread:get("sent")
  end
  local elapsed = 0
  if t_first ~= nil and t_last ~= nil then elapsed = t_last - t_first end
  local e = summary.errors
  io.write(string.format(
    '\nBENCH_RESULT {"responses": %d, "not_ok": %d, "sent": %d, "elapsed": %.6f, '
    .. '"socket_errors": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\n',
    n, bad, total_sent, elapsed, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
