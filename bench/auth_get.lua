-- bench/auth_get.lua - wrk script for auth.sh: an authenticated GET, round
-- robin over the tokens of the Lua table file named by $BENCH_USERS
-- (return { {id=..., token=...}, ... }, written by auth.sh). $BENCH_PATH is
-- the path, "{id}" replaced by the user's id (e.g. /users/{id}). Requests are
-- formatted once, in init, so wrk spends its CPU on sending them.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("offset", counter * 17)
end

local reqs, i = {}, 0
function init(args)
  local users = dofile(os.getenv("BENCH_USERS"))
  local path = os.getenv("BENCH_PATH")
  for n, u in ipairs(users) do
    local p = path:gsub("{id}", u.id)
    reqs[n] = wrk.format("GET", p, { ["Authorization"] = "Bearer " .. u.token })
  end
  i = (offset or 0) % #reqs
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
