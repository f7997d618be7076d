-- wrk script: STREAMING ("stream":true) chat completion through the gateway (or upstream).
-- Static request (no request()/response() callbacks) so that wrk itself stays light.
-- done() prints one machine-readable line that bench/run.py parses:
--   BENCH_RESULT {"requests":…,"p50_us":…,"p90_us":…,"p99_us":…,…}

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer gw-bench-admin-key-0123456789"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"user",'
  .. '"content":"Say hello in one short sentence."}],'
  .. '"stream":true,"stream_options":{"include_usage":true}}'

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,'
      .. '"errors_connect":%d,"errors_read":%d,"errors_write":%d,'
      .. '"errors_status":%d,"errors_timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
