-- etcd range of single keys that exist (written before the run) through the
-- JSON gateway (POST <gateway>/kv/range); ETCD_SERIALIZABLE=true asks for a
-- serializable (member-local) read, else linearizable.
-- Env: ETCD_GATEWAY (/v3), ETCD_KEY_PREFIX, KV_BENCH_KEYS, ETCD_SERIALIZABLE.
package.path = debug.getinfo(1, "S").source:match("@?(.*/)") .. "?.lua;" .. package.path
require("etcd_common")

local gateway = os.getenv("ETCD_GATEWAY") or "/v3"
local key_prefix = os.getenv("ETCD_KEY_PREFIX") or "seed/"
local keys = tonumber(os.getenv("KV_BENCH_KEYS") or "1000")
local serializable = (os.getenv("ETCD_SERIALIZABLE") or "false") == "true"
local headers = { ["Content-Type"] = "application/json" }
local counter = 0
-- Bodies are built once: encoding is not what is measured.
local bodies = {}
for i = 0, keys - 1 do
  bodies[i] = '{"key":"' .. base64(key_prefix .. i) .. '","serializable":' .. tostring(serializable) .. '}'
end

function request()
  counter = counter + 1
  return wrk.format("POST", gateway .. "/kv/range", headers, bodies[counter % keys])
end
