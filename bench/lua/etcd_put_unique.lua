-- etcd put of unique keys with a fixed-size value through the JSON gateway
-- (POST <gateway>/kv/put); each wrk thread has its own key space.
-- Env: ETCD_GATEWAY (/v3), ETCD_KEY_PREFIX, KV_BENCH_VALUE_BYTES.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
require("thread_ids")  -- setup(): the global tid
require("etcd_common")

local gateway = os.getenv("ETCD_GATEWAY") or "/v3"
local key_prefix = os.getenv("ETCD_KEY_PREFIX") or "bench/"
local value64 = base64(string.rep("v", tonumber(os.getenv("KV_BENCH_VALUE_BYTES") or "100")))
local headers = { ["Content-Type"] = "application/json" }
local counter = 0

function request()
  counter = counter + 1
  local body = '{"key":"' .. base64(key_prefix .. tid .. "-" .. counter) .. '","value":"' .. value64 .. '"}'
  return wrk.format("POST", gateway .. "/kv/put", headers, body)
end
