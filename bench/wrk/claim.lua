-- POST /api/tasks/claim without a body: start the best ready task. Each 200 consumes a task.
-- args: [max=N] (stop a thread after N responses, so a small table is not drained)
dofile(string.match(debug.getinfo(1, "S").source, "^@(.*/)") .. "common.lua")

local req

function init(args)
  bench_args(args)
  req = wrk.format("POST", "/api/tasks/claim", bench_headers(), "")
end

function request()
  return req
end
