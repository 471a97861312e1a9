-- wrk script (wrk -s bench/tail.lua): after wrk's own report, print the slowest request to the
-- microsecond and, when BENCH_OVER_US is set, how many entries of wrk's latency histogram lie
-- above that many microseconds.
--
-- wrk records every answered request's latency (below its timeout) in a histogram of 1 us
-- buckets, then corrects it for coordinated omission: a request slower than twice the mean
-- interval between a connection's requests adds the requests that connection would have sent
-- meanwhile (wrk's stats_correct), so the count is of those too, like wrk's percentiles.
-- The maximum is the slowest real request.
--
-- latency(i) is the i-th distinct value and its count, ascending; each call scans the
-- histogram, so the count walks down from the largest value for at most MAX_DISTINCT values.
-- Beyond that it bisects latency:percentile(p), whose rank is round(p / 100 * total + 0.5):
-- the p where it passes the threshold is 100 * (entries at or below it) / total, and the p
-- where it passes the smallest value is 100 * (entries at the smallest value) / total.
local MAX_DISTINCT = 500

local function walk(latency, over, limit)
  local count, distinct = 0, 0
  for i = #latency, 1, -1 do
    local value, n = latency(i)
    if value <= over then return count end
    count = count + n
    distinct = distinct + 1
    if distinct >= limit then return nil end
  end
  return count
end

-- The least p (0 < p < 100) with latency:percentile(p) > value.
local function passes(latency, value)
  local low, high = 0, 100
  for _ = 1, 64 do
    local middle = (low + high) / 2
    if latency:percentile(middle) > value then high = middle else low = middle end
  end
  return high
end

local function bisect(latency, over)
  local smallest, at_smallest = latency(1)
  local total = math.floor(100 * at_smallest / passes(latency, smallest) + 0.5)
  if smallest > over then return total end
  local within = math.floor(passes(latency, over) * total / 100 + 0.5)
  return total - within
end

done = function(summary, latency, requests)
  io.write(string.format("Latency max: %d us\n", latency.max))
  local over = tonumber(os.getenv("BENCH_OVER_US") or "")
  if over == nil then return end
  local count = walk(latency, over, MAX_DISTINCT)
  if count == nil then count = bisect(latency, over) end
  io.write(string.format("Over %d us: %d requests\n", over, count))
  if os.getenv("BENCH_TAIL_CHECK") then     -- both ways, to compare them
    io.write(string.format("check: walk %s bisect %d\n",
                           tostring(walk(latency, over, 1e9)), bisect(latency, over)))
  end
end
