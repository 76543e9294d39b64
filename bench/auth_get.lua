-- bench/auth_get.lua - wrk script for auth.sh: an authenticated GET, round
-- robin over the tokens of $BENCH_USERS ({ {id=..., token=...}, ... }).
-- $BENCH_PATH is the path, "{id}" replaced by the user's id (/users/{id}).
function build(users)
  local reqs, path = {}, os.getenv("BENCH_PATH")
  for n, u in ipairs(users) do
    reqs[n] = wrk.format("GET", (path:gsub("{id}", u.id)), { ["Authorization"] = "Bearer " .. u.token })
  end
  return reqs
end
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "round_robin.lua")
