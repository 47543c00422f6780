-- Token buckets with an optional monthly quota, all or nothing, atomic in Redis
-- (SPEC section 3; issue 12 item 6).
--
-- One call decides `cost` requests that must each pass every bucket given, narrowest
-- first (a key's per-IP bucket, then the key's own), and its quota: a request takes a
-- token from every bucket and counts against the quota only when all of them admit it,
-- so a request refused by its per-IP bucket spends nothing of the key's bucket or
-- quota. keyfront coalesces the requests of one loop tick that share the buckets, so a
-- hot key costs one call per tick. The clock is the server's (TIME), so instances with
-- skewed clocks share one limit. Every key of a call carries the same {hash tag}, so
-- the script runs unchanged on Redis Cluster; a customer's bucket and quota (another
-- tag) are a second call, and keyfront gives back what one call admitted when the
-- other refused (`refund`).
--
-- KEYS[1..n]  bucket hashes          kf:b:{<key_id>}... (fields t = tokens, ts = ms)
-- KEYS[n+1]   quota hash (optional)  kf:q:{<owner>}:<YYYYMM> (fields r = requests, b = bytes)
-- ARGV[1]     n, the number of buckets (0: the quota alone)
-- ARGV[2]     cost, the number of requests asking now (0: only refund or record bytes)
-- ARGV[3]     refund: requests admitted earlier whose other call refused them; their
--             tokens and their count go back
-- ARGV[4]     monthly request quota, -1 for none
-- ARGV[5]     monthly byte quota, -1 for none
-- ARGV[6]     bytes sent by responses finished since the last call
-- ARGV[7]     quota hash lifetime in seconds
-- ARGV[8..]   rate (tokens per second, float) and burst (capacity) of each bucket
-- Returns {allowed, quota_exhausted, requests_used, bytes_used, tokens_1 * 1000, ...}

local n = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])
local refund = tonumber(ARGV[3])
local quota_requests = tonumber(ARGV[4])
local quota_bytes = tonumber(ARGV[5])
local add_bytes = tonumber(ARGV[6])

local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)

local allowed = cost
local tokens = {}
for i = 1, n do
  local rate, burst = tonumber(ARGV[6 + 2 * i]), tonumber(ARGV[7 + 2 * i])
  local state = redis.call('HMGET', KEYS[i], 't', 'ts')
  local level, last = tonumber(state[1]), tonumber(state[2])
  if level == nil or last == nil then
    level = burst
  elseif now > last then
    level = math.min(burst, level + (now - last) * rate / 1000)
  end
  tokens[i] = math.min(burst, level + refund)
  allowed = math.min(allowed, math.floor(tokens[i]))
end
if allowed < 0 then allowed = 0 end

local used_requests, used_bytes, exhausted = 0, 0, 0
local quota = KEYS[n + 1]
if quota then
  local counts = redis.call('HMGET', quota, 'r', 'b')
  used_requests = tonumber(counts[1]) or 0
  used_bytes = tonumber(counts[2]) or 0
  if refund > 0 and used_requests > 0 then
    used_requests = redis.call('HINCRBY', quota, 'r', -math.min(refund, used_requests))
  end
  if add_bytes > 0 then
    used_bytes = redis.call('HINCRBY', quota, 'b', add_bytes)
    redis.call('EXPIRE', quota, ARGV[7])
  end
  if cost > 0 and quota_bytes >= 0 and used_bytes >= quota_bytes then
    allowed, exhausted = 0, 1
  elseif quota_requests >= 0 and used_requests + allowed > quota_requests then
    allowed = math.max(0, quota_requests - used_requests)
    if allowed < cost then exhausted = 1 end
  end
  if allowed > 0 then
    used_requests = redis.call('HINCRBY', quota, 'r', allowed)
    redis.call('EXPIRE', quota, ARGV[7])
  end
end

local reply = {allowed, exhausted, used_requests, used_bytes}
for i = 1, n do
  local burst = tonumber(ARGV[7 + 2 * i])
  local left = tokens[i] - allowed
  if cost > 0 or refund > 0 then
    redis.call('HSET', KEYS[i], 't', tostring(left), 'ts', now)
    -- Gone once refilled: a full bucket and a missing one behave the same.
    local rate = tonumber(ARGV[6 + 2 * i])
    redis.call('PEXPIRE', KEYS[i], math.ceil((burst - left) * 1000 / rate) + 1000)
  end
  reply[4 + i] = math.floor(left * 1000)
end
return reply
