-- bench/login.lua - wrk script for auth.sh: POST /api/v1/auth/login, round
-- robin over the users of $BENCH_USERS ({ {email=..., password=...}, ... }).
function build(users)
  local reqs, headers = {}, { ["Content-Type"] = "application/json" }
  for n, u in ipairs(users) do
    local body = string.format('{"email":"%s","password":"%s"}', u.email, u.password)
    reqs[n] = wrk.format("POST", "/api/v1/auth/login", headers, body)
  end
  return reqs
end
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "round_robin.lua")
