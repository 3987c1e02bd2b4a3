-- GET /api/tasks/{id} for a random id from a file of ids the caller may see.
-- args: ids=PATH [max=N]
dofile(string.match(debug.getinfo(1, "S").source, "^@(.*/)") .. "common.lua")

local ids

function init(args)
  local opts = bench_args(args)
  ids = bench_read_ids(opts.ids)
end

function request()
  return wrk.format("GET", "/api/tasks/" .. ids[math.random(#ids)])
end
