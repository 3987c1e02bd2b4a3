-- POST /api/tasks/{id}/progress?percent=N on a random task the caller is working on.
-- args: ids=PATH [max=N]
dofile(string.match(debug.getinfo(1, "S").source, "^@(.*/)") .. "common.lua")

local ids
local headers

function init(args)
  local opts = bench_args(args)
  ids = bench_read_ids(opts.ids)
  headers = bench_headers()
end

function request()
  local path = string.format("/api/tasks/%s/progress?percent=%d", ids[math.random(#ids)], math.random(0, 100))
  return wrk.format("POST", path, headers, "")
end
