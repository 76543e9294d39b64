-- bench/login.lua - wrk script for auth.sh: POST /api/v1/auth/login, round
-- robin over the users of the Lua table file named by $BENCH_USERS
-- (return { {email=..., password=...}, ... }, written by auth.sh). Each wrk
-- thread starts at its own offset so threads do not log in the same user in
-- lockstep. Requests are formatted once, in init, to keep wrk's own CPU low
-- (it shares the machine with coredb).
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("offset", counter * 17)
end

local reqs, i = {}, 0
function init(args)
  local users = dofile(os.getenv("BENCH_USERS"))
  local headers = { ["Content-Type"] = "application/json" }
  for n, u in ipairs(users) do
    local body = string.format('{"email":"%s","password":"%s"}', u.email, u.password)
    reqs[n] = wrk.format("POST", "/api/v1/auth/login", headers, body)
  end
  i = (offset or 0) % #reqs
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
