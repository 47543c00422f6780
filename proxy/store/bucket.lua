-- Token bucket with an optional monthly quota, atomic in Redis (SPEC section 3).
--
-- One call decides `cost` requests of one bucket at once: keyfront coalesces the
-- requests of one loop tick that share a bucket, so a hot key costs one call per tick.
-- The clock is the server's (TIME), so instances with skewed clocks share one limit.
-- Every key carries the same {hash tag}, so the script runs unchanged on Redis Cluster.
--
-- KEYS[1]  bucket hash            kf:b:{<key_id>} (fields t = tokens, ts = ms)
-- KEYS[2]  quota hash (optional)  kf:q:{<key_id>}:<YYYYMM> (fields r = requests, b = bytes)
-- ARGV[1]  rate, tokens per second (float)
-- ARGV[2]  burst, the bucket's capacity
-- ARGV[3]  cost, the number of requests asking now (0: only record bytes)
-- ARGV[4]  monthly request quota, -1 for none
-- ARGV[5]  monthly byte quota, -1 for none
-- ARGV[6]  bytes sent by responses finished since the last call
-- ARGV[7]  quota hash lifetime in seconds
-- Returns {allowed, tokens_after * 1000, requests_used, bytes_used, quota_exhausted}

local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local quota_requests = tonumber(ARGV[4])
local quota_bytes = tonumber(ARGV[5])
local add_bytes = tonumber(ARGV[6])

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens = burst
elseif now > last then
  tokens = math.min(burst, tokens + (now - last) * rate / 1000)
end

local allowed = math.min(cost, math.floor(tokens))
local used_requests, used_bytes, exhausted = 0, 0, 0
if KEYS[2] then
  local quota = redis.call('HMGET', KEYS[2], 'r', 'b')
  used_requests = tonumber(quota[1]) or 0
  used_bytes = tonumber(quota[2]) or 0
  if add_bytes > 0 then
    used_bytes = redis.call('HINCRBY', KEYS[2], 'b', add_bytes)
    redis.call('EXPIRE', KEYS[2], ARGV[7])
  end
  if quota_bytes >= 0 and used_bytes >= quota_bytes then
    allowed, exhausted = 0, 1
  elseif quota_requests >= 0 and used_requests + allowed > quota_requests then
    allowed = math.max(0, quota_requests - used_requests)
    if allowed < cost then exhausted = 1 end
  end
  if allowed > 0 then
    used_requests = redis.call('HINCRBY', KEYS[2], 'r', allowed)
    redis.call('EXPIRE', KEYS[2], ARGV[7])
  end
end

tokens = tokens - allowed
if cost > 0 then
  redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', now)
  -- Gone once refilled: a full bucket and a missing one behave the same.
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
end
return {allowed, math.floor(tokens * 1000), used_requests, used_bytes, exhausted}
