"""The Redis layer: the only code that spells a Redis key, a hash field or a Lua script.

- :mod:`~shared.redis.keyspace`: key, stream, group and field names, session states;
- :mod:`~shared.redis.wire`: commands in the Redis protocol (hiredis' packer);
- :mod:`~shared.redis.scripts`: Lua scripts, registered once and run by SHA;
- :mod:`~shared.redis.conn`: a connection held for a stretch of raw-protocol work;
- :mod:`~shared.redis.lease`: partition leases;
- :mod:`~shared.redis.txn`: THE guarded transaction (lease-checked MULTI/EXEC);
- :mod:`~shared.redis.consumer`: the consumer-group read/claim loop of worker and projector;
- :mod:`~shared.redis.sessions`: the snapshot-session store (gateway, worker, sources);
- :mod:`~shared.redis.writemodel`: the write model's value codec, counts and lookups.
"""
