-- bench/round_robin.lua - what the wrk scripts of bench/ share: requests
-- formatted once per thread in init (wrk shares the machine with coredb, so
-- its own CPU is kept low) and sent round robin, each thread starting at
-- its own offset so threads do not replay the same caller in lockstep.
--
-- A script sets `build`, a function(users) returning the list of formatted
-- requests for the Lua table file named by $BENCH_USERS, then loads this
-- file: dofile(script_dir() .. "round_robin.lua").
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("offset", counter * 97)
end

local reqs, i = {}, 0
function init(args)
  reqs = build(dofile(os.getenv("BENCH_USERS")))
  i = (offset or 0) % #reqs
end

function request()
  i = i % #reqs + 1
  return reqs[i]
end
