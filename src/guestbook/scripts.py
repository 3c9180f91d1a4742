"""The Lua scripts guestbook runs on the leader, each atomic there: importing a message and
submitting a post. Their keys are `keys.py`'s; `store.py` runs them."""

from __future__ import annotations

import hashlib

# Append one imported message unless it is already here: its source key was imported before,
# or the stream holds an entry with its id and its text (an export coming home). It keeps the
# original id when that id still lies after the newest entry (so an import into an empty
# guestbook is an exact copy), and otherwise appends with a new id. Either way an original
# time that is not its id's is kept in `c`, so a message imported once keeps its time through
# every later export and import. Ids arrive normalised (no leading zeros) and are compared as
# digit strings: Lua's numbers are doubles, which cannot hold every 64-bit part. A message a
# moderator removed stays removed: an export taken before the removal brings nothing back.
IMPORT_SCRIPT = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return false end
local wanted, text, created = ARGV[2], ARGV[3], ARGV[4]
if wanted ~= '' and redis.call('SISMEMBER', KEYS[3], wanted) == 1 then return false end
local function greater(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
if wanted ~= '' then
  local found = redis.call('XRANGE', KEYS[1], wanted, wanted)
  if #found > 0 then
    local fields = found[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 't' and fields[i + 1] == text then return false end
    end
  end
  local last_id = '0-0'
  local info = redis.pcall('XINFO', 'STREAM', KEYS[1])
  if type(info) == 'table' and info['err'] == nil then
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then last_id = info[i + 1] end
    end
  end
  local wms, wseq = string.match(wanted, '^(%d+)-(%d+)$')
  local lms, lseq = string.match(last_id, '^(%d+)-(%d+)$')
  if greater(wms, lms) or (wms == lms and greater(wseq, lseq)) then
    if created == wms then
      return redis.call('XADD', KEYS[1], wanted, 't', text)
    end
    return redis.call('XADD', KEYS[1], wanted, 't', text, 'c', created)
  end
end
return redis.call('XADD', KEYS[1], '*', 't', text, 'c', created)
"""

# One post, whole, in the order the checks must run (see `MessageStore.submit`):
# 1. a post with this idempotency key was taken: answer what it was answered, store nothing;
# 2. this very post ran already (its `attempt`, made once per post, is in the duplicate key):
#    its answer was lost with the connection, and the store sent it again; answer the same;
# 3. the client's sliding minute is full: refuse, saying in how many ms a slot frees;
# 4. the same text from the same client within ten minutes is held as a duplicate (a caller's
#    spam reason says more and is kept; pre-moderation would hold it anyway and says less);
# 5. held: into the queue, with an audit entry; else appended to the stream. The duplicate key
#    then keeps the attempt and the answer, for 2.
# Time is the server's (TIME; scripts replicate their effects, so followers get the writes,
# not the clock), so frontends with skewed clocks share one window. Numbers that become
# stream fields or scores are built as strings: Lua's tostring would print a double.
SUBMIT_SCRIPT = """
local text, client, reason, attempt = ARGV[1], ARGV[2], ARGV[3], ARGV[7]
local limit, window = tonumber(ARGV[4]), tonumber(ARGV[8])
local idempotent = ARGV[5] == '1'
if idempotent then
  local done = redis.call('HMGET', KEYS[4], 's', 'id', 'h', 'r', 'c')
  if done[1] then
    if done[3] ~= ARGV[6] then return {'conflict'} end
    -- A write of its own: WAIT (after this script, on this connection) then counts followers
    -- that have everything up to now, the original post included, not some older write.
    redis.call('HINCRBY', KEYS[4], 'n', 1)
    return {done[1], done[2], done[4], '1', done[5]}
  end
end
local seen = redis.call('GET', KEYS[6])
if seen then
  local ran, s, i, r, c = string.match(seen, '^(%S+) (%S+) (%S+) (%S*) (%S+)$')
  if ran == attempt then
    -- A write of its own, for WAIT, as above.
    redis.call('PEXPIRE', KEYS[6], ARGV[9])
    return {s, i, r, '0', c}
  end
end
local now = redis.call('TIME')
local ms = math.floor(tonumber(now[2]) / 1000)
local now_ms = tonumber(now[1]) * 1000 + ms
local created = now[1] .. string.format('%03d', ms)
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', now_ms - window)
  local used = redis.call('ZCARD', KEYS[5])
  if used >= limit then
    -- The slot that frees first is the one whose leaving takes the count below the limit.
    local due = redis.call('ZRANGE', KEYS[5], used - limit, used - limit, 'WITHSCORES')
    return {'rate', tostring(tonumber(due[2]) + window - now_ms)}
  end
end
if seen and (reason == '' or reason == 'pre-moderation') then reason = 'duplicate' end
local status, id
if reason == '' then
  status = 'published'
  id = redis.call('XADD', KEYS[1], '*', 't', text)
else
  status = 'held'
  id = redis.call('XADD', KEYS[2], '*', 't', text, 'reason', reason, 'client', client,
    'c', created)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[11], '*', 'action', 'hold', 'id', id,
    'by', ARGV[12], 'reason', reason, 'text', text)
end
local answered = table.concat({attempt, status, id, reason, created}, ' ')
redis.call('SET', KEYS[6], answered, 'PX', ARGV[9])
if limit > 0 then
  -- Prefixed: a held and a published post may get the same id string in the same ms.
  redis.call('ZADD', KEYS[5], created, status .. ':' .. id)
  redis.call('PEXPIRE', KEYS[5], window)
end
if idempotent then
  redis.call('HSET', KEYS[4], 's', status, 'id', id, 'h', ARGV[6], 'r', reason, 'c', created)
  redis.call('EXPIRE', KEYS[4], ARGV[10])
end
return {status, id, reason, '0', created}
"""
# Posts name the script by its digest (EVALSHA): the server keeps it compiled, and the 2 KB
# body crosses the wire only when a server does not know it yet (see `_run_posts`).
SUBMIT_SHA = hashlib.sha1(SUBMIT_SCRIPT.encode(), usedforsecurity=False).hexdigest()
