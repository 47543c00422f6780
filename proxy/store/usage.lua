-- One usage row, applied at most once (SPEC section 4): the batch marker is set in
-- the same atomic script as the counts, so a retried batch skips rows already counted.
-- All keys share the row's {hash tag}, so this runs unchanged on Redis Cluster.
--
-- KEYS[1]  batch marker   kf:u:{<s>:<id>}:b:<batch id>:<hour>
-- KEYS[2]  hourly counts  kf:u:{<s>:<id>}:h:<hour start>
-- KEYS[3]  daily counts   kf:u:{<s>:<id>}:d:<day start>
-- ARGV[1..3]  lifetimes in seconds: marker, hourly, daily
-- ARGV[4..]   field, value, field, value, ...
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 1
