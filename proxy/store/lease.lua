-- The usage exporter's lease (SPEC section 16): taken when free or expired, renewed
-- by its holder, in one step so that two instances never both believe they hold it.
-- KEYS[1] kf:x:{x}:lease   ARGV[1] holder   ARGV[2] lifetime, milliseconds
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
