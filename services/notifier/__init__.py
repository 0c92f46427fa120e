"""Notifier: delivers the change feed to webhook endpoints, signed (Standard Webhooks).

Consumes: the change feed (:class:`shared.pg.feed.FeedStore`), woken by the projector's
NOTIFY; the endpoints of ``webhooks``. Produces: one HTTP POST per change per endpoint
whose filters want it (body: the change as the feed API renders it), and a
``webhook_deliveries`` row per change attempted.

Guarantees: at least once: an endpoint's cursor moves in PostgreSQL only past changes
that are all acknowledged (2xx) and recorded, so a notifier killed at any point resumes
at or before the first change not acknowledged. Order per resource: up to
``INGESTD_WEBHOOK_INFLIGHT`` changes in flight per endpoint, never two of one resource; a
resource's change goes out only once every earlier change of it is recorded as delivered,
so a failing change (retried with backoff until the retry window ends, then the endpoint
is disabled with the reason) holds back its resource's later changes and the endpoint's
cursor, not other resources (up to a window of changes) and never another endpoint:
every endpoint has its own task, HTTP session and timeouts, so a slow or dead one never
delays another. One notifier per
endpoint at a time: a lease row (``lease_owner``/``lease_until``) that every write of the
notifier is conditional on; any number of notifiers may run.
"""
