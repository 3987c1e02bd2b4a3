-- POST /api/tasks with an Idempotency-Key unique to each request (prefix, thread, counter).
-- args: slug=PROJECT prefix=RUN-UNIQUE [max=N]
dofile(string.match(debug.getinfo(1, "S").source, "^@(.*/)") .. "common.lua")

local slug
local prefix
local headers
local n = 0
local priorities = { "low", "medium", "high", "critical" }

function init(args)
  local opts = bench_args(args)
  slug = opts.slug
  prefix = opts.prefix
  headers = bench_headers({ ["Content-Type"] = "application/json" })
end

function request()
  n = n + 1
  headers["Idempotency-Key"] = string.format("%s-%d-%d", prefix, tid, n)
  local body = string.format('{"title":"bench idempotent task %d-%d","project_slug":"%s","priority":"%s"}',
    tid, n, slug, priorities[1 + n % 4])
  return wrk.format("POST", "/api/tasks", headers, body)
end
