-- bench/data_query.lua - wrk script for data.sh: POST /api/v1/data/query
-- with the body of the file named by $BENCH_BODY, round robin over the
-- callers of the Lua table file named by $BENCH_USERS
-- (return { {id=..., token=...}, ... }, written by data_setup.py), so that
-- consecutive requests are different users (different rows, different cache
-- keys).
function build(users)
  local f = assert(io.open(os.getenv("BENCH_BODY")))
  local body = f:read("*a"):gsub("%s+$", "")
  f:close()
  local reqs = {}
  for n, u in ipairs(users) do
    reqs[n] = wrk.format("POST", "/api/v1/data/query", {
      ["Authorization"] = "Bearer " .. u.token,
      ["Content-Type"] = "application/json",
    }, body)
  end
  return reqs
end
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "round_robin.lua")
