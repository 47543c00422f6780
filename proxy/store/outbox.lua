-- The usage export's enqueue (SPEC section 16, proxy/store/redis_outbox.py): the ledger
-- entries of one hour and the events they produce, added to every sink's outbox in
-- one atomic step, so that a crash leaves both or neither. Every key shares the hash
-- tag {kf:x}, so this runs unchanged on Redis Cluster.
--
-- Fenced by the lease: an exporter that lost it (a pause longer than its lifetime)
-- writes nothing, so two exporters never both write one hour's ledger.
--
-- KEYS[1]            the lease            kf:x:{x}:lease
-- KEYS[2]            ledger of the hour   kf:x:{x}:l:<hour start>  (key id -> entry)
-- KEYS[2k+1], [2k+2] sink k's queue       kf:x:{x}:q:<sink>  (a zset: event id, by period)
--                    and its events       kf:x:{x}:e:<sink>  (event id -> JSON)
-- ARGV[1] the holder; ARGV[2] the ledger's lifetime, seconds; ARGV[3] n, its entries
-- ARGV[4 .. 3+2n]    key id, entry, ...
-- ARGV[4+2n ..]      event id, period, JSON, ...
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local entries = tonumber(ARGV[3])
for i = 4, 3 + 2 * entries, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
if entries > 0 then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
for k = 3, #KEYS, 2 do
  for i = 4 + 2 * entries, #ARGV, 3 do
    -- an id already waiting is kept as it was (NX): the same id is the same event
    if redis.call('ZADD', KEYS[k], 'NX', ARGV[i + 1], ARGV[i]) == 1 then
      redis.call('HSET', KEYS[k + 1], ARGV[i], ARGV[i + 2])
    end
  end
end
return 1
