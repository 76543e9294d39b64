-- bench/lease_query.lua - wrk script for lease_loop.py: POST /api/v1/data/query
-- on one connection lease (X-Connection-ID $BENCH_LEASE) as the caller of
-- $BENCH_TOKEN with the body $BENCH_BODY. One connection only: a lease takes
-- one call at a time (a second one meanwhile is a 409).
local body = os.getenv("BENCH_BODY")
wrk.method = "POST"
wrk.path = "/api/v1/data/query"
wrk.body = body
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_TOKEN")
wrk.headers["X-Connection-ID"] = os.getenv("BENCH_LEASE")
wrk.headers["Content-Type"] = "application/json"

-- the first answer that is not a 200, for the bench's report
local shown = false
function response(status, headers, resp_body)
  if status ~= 200 and not shown then
    shown = true
    io.write("first non-200: " .. status .. " " .. resp_body:sub(1, 300) .. "\n")
  end
end

-- wrk counts answers that are not 2xx or 3xx as status errors
function done(summary, latency, requests)
  io.write(string.format("non200 %d\n", summary.errors.status))
end
