-- GET one fixed path: a list page (first or deep), a task's audit feed.
-- args: path=/api/tasks?limit=50 [max=N]
dofile(string.match(debug.getinfo(1, "S").source, "^@(.*/)") .. "common.lua")

local req

function init(args)
  local opts = bench_args(args)
  req = wrk.format("GET", opts.path)
end

function request()
  return req
end
