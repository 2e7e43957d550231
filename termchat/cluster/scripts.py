"""The Lua scripts the cluster link runs in Redis, each one atomic step.

KEYS and ARGV are as each command in link.py passes them."""

# Claim a nick for node ARGV[1]: free, ours, or a dead node's (its heartbeat key,
# ARGV[2] .. owner, gone).  Returns false if refused, else the dead node it was
# taken from ('' when it was free or ours), which the join event carries.
CLAIM_SCRIPT = """
local owner = redis.call('GET', KEYS[1])
if (not owner) or owner == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1])
  return ''
end
if redis.call('EXISTS', ARGV[2] .. owner) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
  return owner
end
return false
"""
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
RENAME_SCRIPT = """
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. owner) == 1 then
  return 0
end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('SET', KEYS[2], ARGV[1])
return 1
"""
# Move session KEYS[1] (and its nick, KEYS[2]) to node ARGV[1] if it is for name
# key ARGV[2]; returns {the node that held it, the room its user was last in}.
TAKEOVER_SCRIPT = """
local key = redis.call('HGET', KEYS[1], 'key')
if (not key) or key ~= ARGV[2] then return false end
local old = redis.call('HGET', KEYS[1], 'node')
local room = redis.call('HGET', KEYS[1], 'room') or ''
redis.call('HSET', KEYS[1], 'node', ARGV[1])
redis.call('SET', KEYS[2], ARGV[1])
return {old, room}
"""
# Give session KEYS[1] (and its nick, KEYS[2]) back to node ARGV[2] if node ARGV[1]
# (which took it over but will not take it up) still holds it.
HAND_BACK_SCRIPT = """
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'node', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('SET', KEYS[2], ARGV[2]) end
return 1
"""
END_SESSION_SCRIPT = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
TAKE_SCRIPT = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""
