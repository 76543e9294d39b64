-- bench/tx_loop.lua - wrk script for tx_loop.sh: POST /api/v1/data/transaction,
-- round robin over the callers of $BENCH_USERS (data_setup.py), each
-- request one insert of a project owned by its caller (row-level security)
-- and one Redis INCR of the caller's counter: two outbox rows or more (the
-- INCR and the cache generation bumps of projects and the tables its
-- foreign keys cascade into), each bump's invalidation published and
-- acknowledged before the answer. TX_KEYED=1: each request under its own
-- Idempotency-Key (formatted per request: a key is used once).
local function headers(u)
  return {["Authorization"] = "Bearer " .. u.token, ["Content-Type"] = "application/json"}
end

local function body(u)
  return '{"operations": [' ..
    '{"database": "postgresql", "operation": "insert", "table": "projects", ' ..
    '"data": {"user_id": "' .. u.id .. '", "title": "bench tx", "status": "draft"}}, ' ..
    '{"database": "redis", "operation": "incr", "key": "bench-n"}]}'
end

function build(users)
  local reqs = {}
  for n, u in ipairs(users) do
    reqs[n] = wrk.format("POST", "/api/v1/data/transaction", headers(u), body(u))
  end
  return reqs
end

-- any answer but 200 counts as an error in wrk's "Non-2xx" line
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "round_robin.lua")

if os.getenv("TX_KEYED") == "1" then
  local users, bodies, j, seq, stamp = {}, {}, 0, 0, ""
  function init(args)
    users = dofile(os.getenv("BENCH_USERS"))
    for n, u in ipairs(users) do bodies[n] = body(u) end
    j = (offset or 0) % #users
    -- unique across threads (offset) and runs (the clock): the ledger keeps a key 24 h
    stamp = os.time() .. "-" .. (offset or 0)
  end
  function request()
    j = j % #users + 1
    seq = seq + 1
    local h = headers(users[j])
    h["Idempotency-Key"] = "bench-" .. stamp .. "-" .. seq
    return wrk.format("POST", "/api/v1/data/transaction", h, bodies[j])
  end
end
