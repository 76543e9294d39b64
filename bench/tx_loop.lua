-- bench/tx_loop.lua - wrk script for tx_loop.sh: POST /api/v1/data/transaction,
-- round robin over the callers of $BENCH_USERS (data_setup.py), each
-- request one insert of a project owned by its caller (row-level security)
-- and one Redis INCR of the caller's counter: two outbox rows or more (the
-- INCR and the cache generation bumps of projects and the tables its
-- foreign keys cascade into), each bump's invalidation published and
-- acknowledged before the answer.
function build(users)
  local reqs = {}
  for n, u in ipairs(users) do
    local body = '{"operations": [' ..
      '{"database": "postgresql", "operation": "insert", "table": "projects", ' ..
      '"data": {"user_id": "' .. u.id .. '", "title": "bench tx", "status": "draft"}}, ' ..
      '{"database": "redis", "operation": "incr", "key": "bench-n"}]}'
    reqs[n] = wrk.format("POST", "/api/v1/data/transaction", {
      ["Authorization"] = "Bearer " .. u.token,
      ["Content-Type"] = "application/json",
    }, body)
  end
  return reqs
end

-- any answer but 200 counts as an error in wrk's "Non-2xx" line
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "") .. "round_robin.lua")
