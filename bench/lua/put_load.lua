-- Load KV_LOAD_KEYS keys <prefix><n> (n = start..start+N-1, split across wrk
-- threads) with fixed-size values, then stop: the scale figures' bulk load
-- through the ordinary API. wrk may skip a generated request when a fresh
-- connection's first write would block, so a key or two per connection can be
-- missing: callers count what was loaded by the primary's LSN, not by N.
-- Once a thread has sent its share, its connections only ask /healthz; the
-- thread stops after every connection has had many health answers (each
-- connection has one request in flight, so its last PUT was answered first).
-- Env: KV_BENCH_PATH_PREFIX, KV_BENCH_QUERY, KV_LOAD_KEYS, KV_LOAD_START,
--      KV_LOAD_THREADS, KV_LOAD_CONNS_PER_THREAD.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
require("thread_ids")  -- setup(): the global tid
require("summary")  -- done(): the WRK_JSON line bench/wrk.py reads
local body = string.rep("v", tonumber(os.getenv("KV_BENCH_VALUE_BYTES") or "100"))
local path_prefix = os.getenv("KV_BENCH_PATH_PREFIX") or "/v1/kv/load/"
local query = os.getenv("KV_BENCH_QUERY") or ""
local total = tonumber(os.getenv("KV_LOAD_KEYS") or "1000")
local start = tonumber(os.getenv("KV_LOAD_START") or "0")
local nthreads = tonumber(os.getenv("KV_LOAD_THREADS") or "1")
local sent = 0
local health = 0
local conns = tonumber(os.getenv("KV_LOAD_CONNS_PER_THREAD") or "1")
local share = 0

function init(args)
  -- keys tid-1, tid-1+T, tid-1+2T, ... below total
  share = math.floor((total - tid + nthreads) / nthreads)
end

function request()
  local n = (tid - 1) + sent * nthreads
  sent = sent + 1
  if sent > share then
    -- Every key of this share is in flight: idle connections only ask for health.
    return wrk.format("GET", "/healthz")
  end
  return wrk.format("PUT", path_prefix .. (start + n) .. query, nil, body)
end

function response(status, headers, body)
  if sent > share and body and body:find('"status": "ok"', 1, true) then
    health = health + 1
    if health >= 20 * conns then
      wrk.thread:stop()
    end
  end
end
