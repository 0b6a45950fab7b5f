-- wrk script: hold a request rate with a closed loop. Debian's wrk has no fixed-rate mode (-R is
-- wrk2's), so each connection waits DELAY_MS before sending its next request; the total rate is
-- about connections x 1000 / (DELAY_MS + latency). wrk measures latency from sending a request to
-- its answer, so the wait is not counted in it.
--   wrk -t2 -c20 -d30s --latency -s bench/health-rate.lua http://127.0.0.1:8008/primary
-- with DELAY_MS=100 (the default): 20 connections x 10 requests/s = 200 requests/s.
local delay_ms = tonumber(os.getenv("DELAY_MS") or "100")

function delay()
  return delay_ms
end
