-- Shared by the bench scripts (loaded with dofile): script arguments, per-status counts, an
-- optional cap on responses per thread, and one machine-readable line when the run ends:
--   BENCH_JSON {"requests": …, "duration_us": …, "latency_us": {…}, "statuses": {"200": …}, …}
-- Arguments come after `--` on wrk's command line as key=value pairs.

local threads = {}
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
  table.insert(threads, thread)
end

statuses = {}
local responses = 0
local cap = 0

-- `key=value` arguments as a table; `max=N` stops this thread after N responses.
function bench_args(args)
  local opts = {}
  for _, arg in ipairs(args) do
    local key, value = string.match(arg, "^([^=]+)=(.*)$")
    if key then opts[key] = value end
  end
  cap = tonumber(opts.max or "0") or 0
  math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
  return opts
end

-- One integer a line.
function bench_read_ids(path)
  local ids = {}
  for line in io.lines(path) do
    if line ~= "" then ids[#ids + 1] = line end
  end
  assert(#ids > 0, "no ids in " .. path)
  return ids
end

-- A copy of the headers given with -H (the token), plus some of our own.
function bench_headers(extra)
  local headers = {}
  for name, value in pairs(wrk.headers) do headers[name] = value end
  for name, value in pairs(extra or {}) do headers[name] = value end
  return headers
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  responses = responses + 1
  if cap > 0 and responses >= cap then wrk.thread:stop() end
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    local counts = thread:get("statuses") or {}
    for code, n in pairs(counts) do total[code] = (total[code] or 0) + n end
  end
  local parts = {}
  for code, n in pairs(total) do parts[#parts + 1] = string.format('"%d":%d', code, n) end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f},"statuses":{%s}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    table.concat(parts, ",")))
end
