"""Gateway: HTTP in, raw events out.

Consumes: HTTP requests (ingest API with ingest keys; admin and read APIs with
the admin token). Produces: one raw event per accepted single, delete or
one-request bulk on ``ingest:{p}`` plus a pending receipt marker; for a
multi-part snapshot session, the parts are stored in Redis and the request
that completes the set appends the snapshot's one raw event. Guarantees: a
request is answered ``202 {"eventId"}`` only after its event (or part) is in
Redis (group-committed with concurrent requests); a refused request appends
nothing. An unreachable or unresponsive Redis or PostgreSQL is 503 ``unavailable``
on every route that needs it, within ``INGESTD_REDIS_TIMEOUT_MS`` for Redis; a 503
after the append was sent may still have stored the event (at least once from the
producer's side), unless the request carries an ``Idempotency-Key``: then its key is
claimed with the append, atomically, and a retry answers the first response
(``services/gateway/idempotency.py``). A batch event is stored like a one-request bulk.
"""
