-- GET of keys that exist (written before the run): KV_BENCH_KEYS keys named <prefix>0..N-1.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
require("summary")  -- done(): the WRK_JSON line bench/wrk.py reads
local keys = tonumber(os.getenv("KV_BENCH_KEYS") or "1000")
local path_prefix = os.getenv("KV_BENCH_PATH_PREFIX") or "/v1/kv/seed/"
local query = os.getenv("KV_BENCH_QUERY") or ""
local counter = 0

function request()
  counter = counter + 1
  return wrk.format("GET", path_prefix .. (counter % keys) .. query)
end
