-- wrk script (wrk -s bench/tail.lua): after wrk's own report, print the slowest request to the
-- microsecond and, when BENCH_OVER_US is set, how many requests took longer than that many
-- microseconds. wrk records every request's latency (up to its timeout) in a histogram of
-- 1 us buckets; latency(i) is the i-th distinct value and its count, ascending, so the
-- walk goes down from the largest value and stops at the threshold. Each latency(i) scans the
-- histogram, so the walk is capped at MAX_DISTINCT values (the count is then a lower bound).
local MAX_DISTINCT = 2000

done = function(summary, latency, requests)
  io.write(string.format("Latency max: %d us\n", latency.max))
  local over = tonumber(os.getenv("BENCH_OVER_US") or "")
  if over == nil then return end
  local count, distinct, capped = 0, 0, ""
  for i = #latency, 1, -1 do
    local value, n = latency(i)
    if value <= over then break end
    count = count + n
    distinct = distinct + 1
    if distinct >= MAX_DISTINCT then
      capped = " at least"
      break
    end
  end
  io.write(string.format("Over %d us:%s %d requests\n", over, capped, count))
end
