-- PUT of unique keys with a fixed-size value; each wrk thread has its own key space.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
require("thread_ids")  -- setup(): the global tid
require("summary")  -- done(): the WRK_JSON line bench/wrk.py reads
local body = string.rep("v", tonumber(os.getenv("KV_BENCH_VALUE_BYTES") or "100"))
local path_prefix = os.getenv("KV_BENCH_PATH_PREFIX") or "/v1/kv/bench/"
local query = os.getenv("KV_BENCH_QUERY") or ""
local counter = 0

function request()
  counter = counter + 1
  return wrk.format("PUT", path_prefix .. tid .. "-" .. counter .. query, nil, body)
end
