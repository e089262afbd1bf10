-- Numbers wrk's threads 1..N in the global `tid`, so each can write its own key space
-- (required by the scripts that write unique keys).
local threads = {}
tid = 0  -- global: thread:set() sets the thread's global, a local would shadow it

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
