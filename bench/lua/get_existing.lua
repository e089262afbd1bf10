-- GET of keys that exist (written before the run): KV_BENCH_KEYS keys named <prefix>0..N-1.
local keys = tonumber(os.getenv("KV_BENCH_KEYS") or "1000")
local path_prefix = os.getenv("KV_BENCH_PATH_PREFIX") or "/v1/kv/seed/"
local query = os.getenv("KV_BENCH_QUERY") or ""
local counter = 0

function request()
  counter = counter + 1
  return wrk.format("GET", path_prefix .. (counter % keys) .. query)
end

function done(summary, latency, requests)
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, "non_2xx": %d, "socket_errors": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
