-- PUT of unique keys with a fixed-size value; each wrk thread has its own key space.
local body = string.rep("v", tonumber(os.getenv("KV_BENCH_VALUE_BYTES") or "100"))
local path_prefix = os.getenv("KV_BENCH_PATH_PREFIX") or "/v1/kv/bench/"
local query = os.getenv("KV_BENCH_QUERY") or ""
local threads = {}
local counter = 0
local tid = 0

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function request()
  counter = counter + 1
  return wrk.format("PUT", path_prefix .. tid .. "-" .. counter .. query, nil, body)
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
