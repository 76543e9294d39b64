-- bench/data_query.lua - wrk script for data.sh: POST /api/v1/data/query
-- with the body of the file named by $BENCH_BODY, round robin over the
-- callers of the Lua table file named by $BENCH_USERS
-- (return { {id=..., token=...}, ... }, written by data_setup.py), so that
-- consecutive requests are different users (different rows, different cache
-- keys). Each wrk thread starts at its own offset. Requests are formatted
-- once, in init, so wrk spends its CPU on sending them.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("offset", counter * 97)
end

local reqs, i = {}, 0
function init(args)
  local users = dofile(os.getenv("BENCH_USERS"))
  local f = assert(io.open(os.getenv("BENCH_BODY")))
  local body = f:read("*a"):gsub("%s+$", "")
  f:close()
  for n, u in ipairs(users) do
    reqs[n] = wrk.format("POST", "/api/v1/data/query", {
      ["Authorization"] = "Bearer " .. u.token,
      ["Content-Type"] = "application/json",
    }, body)
  end
  i = (offset or 0) % #reqs
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
