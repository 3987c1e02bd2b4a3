-- POST /api/tasks with a fresh title each time, in the writer's project.
-- args: slug=PROJECT [max=N]
dofile(string.match(debug.getinfo(1, "S").source, "^@(.*/)") .. "common.lua")

local slug
local headers
local n = 0
local priorities = { "low", "medium", "high", "critical" }

function init(args)
  local opts = bench_args(args)
  slug = opts.slug
  headers = bench_headers({ ["Content-Type"] = "application/json" })
end

function request()
  n = n + 1
  local body = string.format('{"title":"bench task %d-%d","project_slug":"%s","priority":"%s"}',
    tid, n, slug, priorities[1 + n % 4])
  return wrk.format("POST", "/api/tasks", headers, body)
end
